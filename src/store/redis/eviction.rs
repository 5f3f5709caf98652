//! Whether Redis may evict waitroom's keys: read from `INFO memory` (of one
//! node, or each node of a Cluster), since managed services often rename or
//! refuse `CONFIG`.

use redis::Value;

/// Why this setup would lose data, if it would: a node with a memory limit
/// and a `maxmemory-policy` other than `noeviction`. Without a memory limit
/// a node never evicts, whatever its policy.
pub(super) fn problem(info: &Value) -> Option<String> {
    let mut nodes = Vec::new();
    collect_policies(info, &mut nodes);
    nodes
        .into_iter()
        .find(|(limit, policy)| *limit > 0 && policy != "noeviction")
        .map(|(_, policy)| {
            format!(
                "Redis's maxmemory-policy is {policy}: under memory pressure it would evict \
                 waitroom's keys (places, admissions, consumed tokens); set \
                 maxmemory-policy noeviction"
            )
        })
}

/// Each node's `maxmemory` and `maxmemory_policy` in an `INFO memory`
/// answer, from one node or from each node of a Cluster.
fn collect_policies(value: &Value, into: &mut Vec<(u64, String)>) {
    match value {
        Value::BulkString(bytes) => collect_from_text(&String::from_utf8_lossy(bytes), into),
        Value::VerbatimString { text, .. } | Value::SimpleString(text) => {
            collect_from_text(text, into)
        }
        Value::Array(items) | Value::Set(items) => {
            for item in items {
                collect_policies(item, into);
            }
        }
        Value::Map(pairs) => {
            for (_, item) in pairs {
                collect_policies(item, into);
            }
        }
        _ => {}
    }
}

fn collect_from_text(text: &str, into: &mut Vec<(u64, String)>) {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.trim().to_owned())
    };
    if let Some(policy) = field("maxmemory_policy:") {
        let limit = field("maxmemory:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        into.push((limit, policy));
    }
}
