//! Local search: how texts and queries are cut into words.
//!
//! A text is lowercased and cut at every character that is not alphanumeric; each word
//! (at most [`MAX_WORD_CHARS`] characters kept) and each of its prefixes of at least
//! [`MIN_PREFIX_CHARS`] characters is a search term. A query matches a message when every
//! word of the query is a prefix of a word of the message. The SQLite store keeps, per
//! message, a keyed tag of each term (never the term), so the index undoes nothing of
//! the store's encryption beyond what equal tags show: which stored messages share a word.

use std::collections::BTreeSet;

/// Characters kept of a word (longer words are indexed by their start).
pub const MAX_WORD_CHARS: usize = 24;
/// The shortest prefix indexed, in characters.
pub const MIN_PREFIX_CHARS: usize = 2;
/// The most terms one message adds to the index.
pub const MAX_TERMS: usize = 512;
/// The most words a query has (more are ignored).
pub const MAX_QUERY_WORDS: usize = 8;

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.chars().flat_map(char::to_lowercase).take(MAX_WORD_CHARS).collect())
}

/// The terms a text is indexed under: its words and their prefixes (at most
/// [`MAX_TERMS`]).
pub fn terms(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for w in words(text) {
        let chars: Vec<char> = w.chars().collect();
        for n in MIN_PREFIX_CHARS.min(chars.len())..=chars.len() {
            if out.len() >= MAX_TERMS {
                return out;
            }
            out.insert(chars[..n].iter().collect());
        }
    }
    out
}

/// The query's words (at most [`MAX_QUERY_WORDS`]), each a term to look up. Words of one
/// character only narrow the final check ([`matches`]).
pub fn query_terms(query: &str) -> Vec<String> {
    let mut out: Vec<String> = words(query)
        .filter(|w| w.chars().count() >= MIN_PREFIX_CHARS)
        .take(MAX_QUERY_WORDS)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// True for a message search looks at: a text that is not deleted.
pub fn searchable(m: &super::StoredMessage) -> bool {
    m.kind == super::MessageKind::Text && !m.deleted && !m.text.is_empty()
}

/// True when every word of `query` is a prefix of a word of `text`.
pub fn matches(text: &str, query: &str) -> bool {
    let have: Vec<String> = words(text).collect();
    let mut any = false;
    for q in words(query).take(MAX_QUERY_WORDS) {
        any = true;
        if !have.iter().any(|w| w.starts_with(&q)) {
            return false;
        }
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_prefixes_and_matching() {
        let t = terms("Hello, Wörld! 42x");
        for want in ["he", "hel", "hello", "wö", "wörld", "42", "42x"] {
            assert!(t.contains(want), "{want}");
        }
        assert!(!t.contains("h"));
        assert!(matches("Hello, Wörld!", "wör hel"));
        assert!(matches("Hello, Wörld!", "WÖRLD"));
        assert!(!matches("Hello, Wörld!", "world"));
        assert!(!matches("Hello", ""));
        assert_eq!(query_terms("a bc bc Def"), vec!["bc".to_owned(), "def".to_owned()]);
        // Bounded whatever the text.
        assert!(terms(&"abcdefghij ".repeat(10_000)).len() <= MAX_TERMS);
    }
}
