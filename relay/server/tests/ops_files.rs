//! The operator's files in deploy/ hold what docs/operations.md says: the Prometheus alert
//! rules and the Grafana dashboard name only metrics the relay exports, the dashboard is
//! valid JSON, and the systemd unit verifies with `systemd-analyze` (pointed at this build
//! of `sotto-relay`) with an exposure score of at most 2.0 ("OK"). The container
//! deployment's relay.toml is a valid configuration, and compose.yaml and nginx.conf name
//! the files and services they rely on. (scripts/container.sh builds and runs the image.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(deploy(file)).unwrap_or_else(|e| panic!("deploy/{file}: {e}"))
}

/// Every `sotto_relay_…` name in `text` (the bare prefix, as in a comment, is not one).
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("sotto_relay_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if end > "sotto_relay_".len() {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// The metric families the relay exports, with their types.
fn exported() -> Vec<(String, String)> {
    sotto_relay::metrics::Metrics::default()
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect()
}

/// `name` is an exported family, or a histogram's `_bucket`, `_sum` or `_count`.
fn is_exported(name: &str, families: &[(String, String)]) -> bool {
    families.iter().any(|(n, t)| {
        name == n
            || (t == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(n.as_str())))
    })
}

#[test]
fn alert_rules_and_dashboard_name_only_exported_metrics() {
    let families = exported();
    assert!(families.len() > 40, "{families:?}");
    for file in [
        "prometheus/sotto-relay-alerts.yml",
        "grafana/sotto-relay-dashboard.json",
    ] {
        let used = names(&read(file));
        assert!(used.len() >= 10, "{file}: only {used:?}");
        for name in &used {
            assert!(
                is_exported(name, &families),
                "{file}: {name} is not a metric the relay exports"
            );
        }
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("grafana/sotto-relay-dashboard.json")).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for p in panels {
        assert!(p["targets"].as_array().is_some_and(|t| !t.is_empty()), "{}", p["title"]);
    }
    let rules = read("prometheus/sotto-relay-alerts.yml");
    assert!(rules.matches("- alert: ").count() >= 10);
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let unit = read("systemd/sotto-relay.service");
    for key in [
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "StateDirectory=sotto-relay",
        "LimitNOFILE=",
        "LoadCredential=relay.toml:/etc/sotto-relay/relay.toml",
        "--config %d/relay.toml",
    ] {
        assert!(unit.contains(key), "the unit lacks {key:?}");
    }
    let analyze = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("systemd-analyze"))
        .find(|p| p.is_file());
    let Some(analyze) = analyze else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("systemd-analyze is missing in CI (scripts/setup.sh installs systemd)");
        }
        eprintln!("\n*** SKIPPED: systemd-analyze (install Debian's systemd package) ***\n");
        return;
    };
    // The same unit, run from this build.
    let dir = std::env::temp_dir().join(format!("sotto-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sotto-relay.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/sotto-relay", env!("CARGO_BIN_EXE_sotto-relay")),
    )
    .unwrap();
    let verify = Command::new(&analyze).arg("verify").arg(&path).output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    let security = Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        security.status.success(),
        "exposure above 2.0: {}",
        String::from_utf8_lossy(&security.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_container_deployment_is_consistent() {
    // The relays' file loads and validates as the relay would load it.
    let config = sotto_relay::Config::from_file(&deploy("container/relay.toml")).unwrap();
    config.validate().unwrap();
    let cluster = config.cluster.as_ref().expect("a [cluster] section");
    assert_eq!(cluster.secret_file, Path::new("/run/secrets/cluster_key"));
    assert_eq!(cluster.nats_url, "nats://nats:4222");
    let compose = read("container/compose.yaml");
    for needed in [
        "dockerfile: deploy/container/Dockerfile",
        "./relay.toml:/etc/sotto-relay/relay.toml:ro",
        "./nginx.conf:/etc/nginx/conf.d/default.conf:ro",
        "SOTTO_CONFIG: /etc/sotto-relay/relay.toml",
        "SOTTO_BEHIND_TLS_PROXY: \"true\"",
        "cluster_key:",
        "  relay2:",
    ] {
        assert!(compose.contains(needed), "compose.yaml lacks {needed:?}");
    }
    let nginx = read("container/nginx.conf");
    for node in ["server relay1:8080", "server relay2:8080"] {
        assert!(nginx.contains(node), "nginx.conf lacks {node:?}");
    }
    assert!(
        nginx.contains("proxy_set_header Upgrade $http_upgrade;"),
        "WebSockets through nginx"
    );
    let dockerfile = read("container/Dockerfile");
    assert!(dockerfile.contains("USER 10001:10001"), "the image runs unprivileged");
    assert!(
        dockerfile.contains("cargo build --release --locked"),
        "the image builds the relay"
    );
}
