//! The `metrics` object (our extension).

use crate::path::FieldPath;
use crate::schema::METRICS_KEYS;
use crate::tree::Json;
use crate::validate::auth::sha256_hex;
use crate::validate::problems::Problems;
use crate::validate::tls::tls;
use crate::validate::transport::is_host_port;
use crate::validate::values::{object, string};
use crate::MetricsConfig;

/// Validates `metrics`.
pub(crate) fn metrics(
    path: &FieldPath<'_>,
    value: Option<&Json>,
    problems: &mut Problems,
) -> Option<MetricsConfig> {
    let mut metrics = MetricsConfig::default();
    let Some(value) = value else {
        return Some(metrics);
    };
    let entries = object(path, value, problems)?;
    let before = problems.count();
    for (key, value) in entries {
        let path = path.key(key);
        match key.as_str() {
            "listen" => {
                let Some(listen) = string(&path, value, problems) else {
                    continue;
                };
                if is_host_port(listen) {
                    metrics.listen = Some(listen.to_owned());
                } else {
                    problems.add(
                        &path,
                        format_args!("must be HOST:PORT (port 0 to 65535), got {listen:?}"),
                    );
                }
            }
            "bearer_sha256" => metrics.bearer_sha256 = sha256_hex(&path, value, problems),
            "tls" => metrics.tls = tls(&path, value, problems),
            _ => problems.unknown_key(&path, key, METRICS_KEYS),
        }
    }
    (problems.count() == before).then_some(metrics)
}
