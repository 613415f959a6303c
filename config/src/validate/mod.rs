//! Turns a parsed document into a [`Config`], collecting every problem rather than stopping at the first.

mod audit;
mod auth;
mod limits;
mod metrics;
mod pools;
mod privileges;
mod problems;
mod routing;
mod supervision;
mod tenants;
mod tls;
mod transport;
mod values;
mod websocket;

use crate::path::FieldPath;
use crate::schema::TOP_KEYS;
use crate::tree::Json;
use crate::Config;
use problems::Problems;

/// Validates the whole document; on failure returns every problem, each prefixed with its field path.
pub(crate) fn config(document: &Json) -> Result<Config, Vec<String>> {
    let mut problems = Problems::default();
    let root = FieldPath::Root;
    let Some(entries) = values::object(&root, document, &mut problems) else {
        return Err(problems.into_vec());
    };
    for (key, _) in entries {
        if !TOP_KEYS.contains(&key.as_str()) {
            problems.unknown_key(&root.key(key), key, TOP_KEYS);
        }
    }
    // Sections go in a fixed order because routing needs the pool ids, wherever `pools` sits in the file.
    let pools = pools::pools(&root.key("pools"), document.get("pools"), &mut problems);
    let limits = limits::limits(&root.key("limits"), document.get("limits"), &mut problems);
    let transport = transport::transport(
        &root.key("transport"),
        document.get("transport"),
        &mut problems,
    );
    let routing = routing::routing(
        &root.key("routing"),
        document.get("routing"),
        pools.ids.as_deref(),
        &mut problems,
    );
    let metrics = metrics::metrics(&root.key("metrics"), document.get("metrics"), &mut problems);
    let auth = auth::auth(&root.key("auth"), document.get("auth"), &mut problems);
    let tenants = limits.as_ref().and_then(|limits| {
        let path = root.key("tenants");
        tenants::tenants(&path, document.get("tenants"), limits, &mut problems)
    });
    let audit = audit::audit(&root.key("audit"), document.get("audit"), &mut problems);
    let websocket = websocket::websocket(
        &root.key("websocket"),
        document.get("websocket"),
        routing.as_ref().map(|r| r.session_id_field.as_str()),
        &mut problems,
    );
    match (
        pools.pools,
        limits,
        transport,
        routing,
        metrics,
        auth,
        tenants,
        audit,
        websocket,
    ) {
        (
            Some(pools),
            Some(limits),
            Some(transport),
            Some(routing),
            Some(metrics),
            Some(auth),
            Some(tenants),
            Some(audit),
            Some(websocket),
        ) if problems.count() == 0 => Ok(Config {
            pools,
            limits,
            transport,
            routing,
            metrics,
            auth,
            tenants,
            audit,
            websocket,
            source: None,
        }),
        _ => Err(problems.into_vec()),
    }
}

/// Validates the text of a tokens file (`auth.tokens_file`): a JSON array of entries shaped like
/// `auth.tokens[]`, checked by the same rules.
pub(crate) fn token_file(document: &Json) -> Result<Vec<crate::TokenEntry>, Vec<String>> {
    let mut problems = Problems::default();
    match auth::tokens(&FieldPath::Root, document, &mut problems) {
        Some(tokens) if problems.count() == 0 => Ok(tokens),
        _ => Err(problems.into_vec()),
    }
}
