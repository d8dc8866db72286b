//! Where the client's randomness comes from: the OS, or a seeded source in tests.

use std::sync::Arc;

use rand_chacha::ChaCha20Rng;
#[cfg(any(test, feature = "dangerous_seeded_rng"))]
use rand_core::RngCore;
use rand_core::SeedableRng;
#[cfg(any(test, feature = "dangerous_seeded_rng"))]
use std::sync::Mutex as StdMutex;
use zeroize::Zeroizing;

use super::ClientOptions;
use super::error::ClientError;

type FillFn = dyn Fn(&mut [u8]) -> Result<(), ClientError> + std::marker::Send + Sync;

/// Where the client's generators get their 256-bit seeds: the OS generator (getrandom)
/// in apps. A failure is [`ClientError::Entropy`], never a zero or short seed.
#[derive(Clone)]
pub struct Entropy(Arc<FillFn>);

impl std::fmt::Debug for Entropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entropy").finish_non_exhaustive()
    }
}

impl Entropy {
    /// The operating system's generator.
    pub(crate) fn os() -> Self {
        Self(Arc::new(|buf: &mut [u8]| {
            getrandom::getrandom(buf).map_err(|_| ClientError::Entropy)
        }))
    }

    /// Tests only: an entropy source calling `fill`.
    #[cfg(any(test, feature = "dangerous_seeded_rng"))]
    pub fn dangerous_from_fn(
        fill: impl Fn(&mut [u8]) -> Result<(), ClientError> + std::marker::Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(fill))
    }

    /// Tests only: a reproducible stream derived from `seed` (anyone who knows the number
    /// knows every key).
    #[cfg(any(test, feature = "dangerous_seeded_rng"))]
    pub fn dangerous_seeded(seed: u64) -> Self {
        let mut s = [0x5e_u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        let stream = StdMutex::new(ChaCha20Rng::from_seed(s));
        Self::dangerous_from_fn(move |buf| {
            stream.lock().unwrap_or_else(|e| e.into_inner()).fill_bytes(buf);
            Ok(())
        })
    }

    /// The source `options` name: the OS generator unless a test set another.
    pub(crate) fn for_options(options: &ClientOptions) -> Self {
        #[cfg(any(test, feature = "dangerous_seeded_rng"))]
        {
            if let Some(e) = &options.dangerous_entropy {
                return e.clone();
            }
            if let Some(seed) = options.dangerous_rng_seed {
                return Self::dangerous_seeded(seed);
            }
        }
        let _ = options;
        Self::os()
    }

    /// Fills `buf` from the source.
    pub(crate) fn fill(&self, buf: &mut [u8]) -> Result<(), ClientError> {
        (self.0)(buf)
    }

    /// A generator seeded with 32 fresh bytes.
    pub(crate) fn rng(&self) -> Result<ChaCha20Rng, ClientError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        self.fill(seed.as_mut_slice())?;
        Ok(ChaCha20Rng::from_seed(*seed))
    }
}
