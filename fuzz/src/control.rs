//! The `control_request` target: lines on the control socket, as the daemon parses them
//! (`fssd::protocol::Envelope`, which carries a `Request`), and the checks that apply to names
//! and sizes in them. Beyond "never panic": a parsed request serializes and parses back to the
//! same value, so what the daemon logs or forwards is what it was sent.

use fssd::protocol::Envelope;

/// The fuzz target's body: each line of `data` is one request.
pub fn control_request(data: &[u8]) {
    for line in data.split(|&b| b == b'\n') {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
            check_strings(&v);
        }
        let Ok(env) = serde_json::from_slice::<Envelope>(line) else {
            continue;
        };
        let text = serde_json::to_vec(&env).expect("a parsed request serializes");
        let back: Envelope = serde_json::from_slice(&text).expect("and parses back");
        assert_eq!(back, env, "round trip of {}", String::from_utf8_lossy(line));
    }
}

/// Every string in a request may be a name or a size: their checks must refuse or accept it,
/// never panic.
fn check_strings(v: &serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            let _ = fssd::names::check_name(s);
            if let Ok(n) = fssd::names::parse_size(s) {
                let _ = fssd::names::human_size(n);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(check_strings),
        serde_json::Value::Object(o) => o.values().for_each(check_strings),
        _ => {}
    }
}

/// Seeds: one line per kind of request, as the CLI sends them, plus a few wrong ones.
#[must_use]
pub fn control_seeds() -> Vec<(String, Vec<u8>)> {
    let lines: &[(&str, &str)] = &[
        ("status", r#"{"v":1,"id":1,"op":"status"}"#),
        (
            "volume-create",
            r#"{"v":1,"id":2,"op":"volume-create","name":"vol0","size":1073741824,"image":"/var/lib/fss/volumes/vol0.img"}"#,
        ),
        (
            "volume-add",
            r#"{"v":1,"id":3,"op":"volume-add","name":"vol1","device":"/dev/loop0"}"#,
        ),
        (
            "snapshot-create",
            r#"{"v":1,"id":4,"op":"snapshot-create","volume":"vol0","name":"s1","store":"/srv/stores/","cluster_size":65536,"max_store_size":1048576,"transient":false,"on_store_error":"fail-write","unlink_store":false,"mount_point":"/mnt","lease":7}"#,
        ),
        (
            "snapshot-create-group",
            r#"{"v":1,"id":5,"op":"snapshot-create-group","members":[{"volume":"a","name":"g"},{"volume":"b","name":"g"}]}"#,
        ),
        (
            "lists",
            "{\"v\":1,\"op\":\"volume-list\"}\n{\"v\":1,\"op\":\"snapshot-list\"}\n{\"v\":1,\"op\":\"snapshot-info\",\"name\":\"s1\"}",
        ),
        (
            "lease",
            "{\"v\":1,\"op\":\"lease-open\",\"mount_point\":\"/mnt\"}\n{\"v\":1,\"op\":\"lease-close\",\"lease\":18446744073709551615}",
        ),
        (
            "diff-backup",
            "{\"v\":1,\"op\":\"diff\",\"snapshot\":\"s2\",\"until\":\"s3\"}\n{\"v\":1,\"op\":\"backup\",\"snapshot\":\"s2\",\"since\":\"s1\"}",
        ),
        (
            "restore-rollback",
            "{\"v\":1,\"op\":\"restore\",\"volume\":\"vol0\",\"files\":[\"/b/full\",\"/b/incr\"]}\n{\"v\":1,\"op\":\"rollback\",\"volume\":\"vol0\",\"snapshot\":\"s1\",\"force\":true}",
        ),
        (
            "deletes",
            "{\"v\":1,\"op\":\"snapshot-delete\",\"name\":\"s1\"}\n{\"v\":1,\"op\":\"volume-remove\",\"name\":\"vol0\"}\n{\"v\":1,\"op\":\"snapshot-verify\",\"name\":\"s1\"}\n{\"v\":1,\"op\":\"checksum\",\"name\":\"s1\"}",
        ),
        (
            "wrong",
            "{\"v\":1,\"op\":\"volume-create\",\"name\":\"../x\",\"size\":18446744073709551615}\n{\"v\":2,\"op\":\"nope\"}\n{\"op\":\"status\"}\n[1,2]\n{\"v\":1,\"op\":\"volume-create\",\"name\":\"x\",\"size\":\"99999999T\"}",
        ),
    ];
    lines
        .iter()
        .map(|(name, text)| (format!("seed-{name}"), text.as_bytes().to_vec()))
        .collect()
}
