//! etcd's JSON gateway (`POST /v3/...` over HTTP/1.1) against a 3-node cluster of real processes,
//! with `curl` as the client (as etcd's own documentation drives the gateway). Requests go to a
//! follower, so every write and linearizable read is forwarded to the leader by the same code as
//! gRPC's. Each check reads the JSON answer: etcd's field names, int64 as strings, bytes as
//! base64, and etcd's error body.

mod etcdctl_common;
mod process_cluster;

use std::process::Command;

use etcdctl_common::{base64, cluster, runtime};
use serde_json::Value;

/// `curl` a request; returns (HTTP status, body).
fn call(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut command = Command::new("curl");
    command
        .args(["-s", "--http1.1", "-m", "20", "-X", method])
        .args(["-w", "\n%{http_code}"])
        .arg(format!("http://{addr}{path}"));
    if let Some(body) = body {
        command.args(["-H", "Content-Type: application/json", "-d", body]);
    }
    let out = command
        .output()
        .expect("curl runs (Debian's curl; .ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A streaming POST (`curl -N`): the child and its output lines.
fn stream(
    addr: &str,
    path: &str,
    body: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new("curl")
        .args(["-sN", "--http1.1", "-m", "60", "-X", "POST"])
        .arg(format!("http://{addr}{path}"))
        .args(["-d", body])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl runs");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// The next streamed line, parsed.
fn next_json(rx: &std::sync::mpsc::Receiver<String>) -> Value {
    let line = rx
        .recv_timeout(std::time::Duration::from_secs(15))
        .expect("a streamed line");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// A POST that must answer 200; the parsed body.
fn post(addr: &str, path: &str, body: &str) -> Value {
    let (code, text) = call(addr, "POST", path, Some(body));
    assert_eq!(code, 200, "POST {path} {body}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text}"))
}

fn b64(s: &str) -> String {
    base64(s.as_bytes())
}

#[test]
fn the_json_gateway_serves_kv_lease_lock_and_election_through_a_follower() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime();
    let (cluster, _, follower) = cluster(dir.path(), &rt);
    let addr = cluster.addrs[&follower].to_string();

    // GET /version answers like etcd 3.4 (clients such as Patroni check it first).
    let (code, text) = call(&addr, "GET", "/version", None);
    assert_eq!(code, 200);
    let version: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(version["etcdserver"], "3.4.0");
    assert_eq!(version["etcdcluster"], "3.4.0");

    // KV: put, range, txn, delete range.
    let put = post(
        &addr,
        "/v3/kv/put",
        &format!(r#"{{"key": "{}", "value": "{}"}}"#, b64("foo"), b64("bar")),
    );
    let revision: i64 = put["header"]["revision"]
        .as_str()
        .expect("int64 as a string")
        .parse()
        .expect("a number");
    assert!(revision >= 2, "{put}");
    let range = post(
        &addr,
        "/v3/kv/range",
        &format!(r#"{{"key": "{}"}}"#, b64("foo")),
    );
    assert_eq!(range["count"], "1", "{range}");
    assert_eq!(range["kvs"][0]["key"], b64("foo"));
    assert_eq!(range["kvs"][0]["value"], b64("bar"));
    assert_eq!(range["kvs"][0]["mod_revision"], revision.to_string());
    let txn = post(
        &addr,
        "/v3/kv/txn",
        &format!(
            r#"{{"compare": [{{"key": "{k}", "target": "VALUE", "result": "EQUAL", "value": "{v}"}}],
                "success": [{{"request_put": {{"key": "{k}", "value": "{n}"}}}}],
                "failure": [{{"request_range": {{"key": "{k}"}}}}]}}"#,
            k = b64("foo"),
            v = b64("bar"),
            n = b64("baz")
        ),
    );
    assert_eq!(txn["succeeded"], true, "{txn}");
    let range = post(
        &addr,
        "/v3/kv/range",
        &format!(r#"{{"key": "{}"}}"#, b64("foo")),
    );
    assert_eq!(range["kvs"][0]["value"], b64("baz"));
    let deleted = post(
        &addr,
        "/v3/kv/deleterange",
        &format!(r#"{{"key": "{}", "prev_kv": true}}"#, b64("foo")),
    );
    assert_eq!(deleted["deleted"], "1", "{deleted}");
    assert_eq!(deleted["prev_kvs"][0]["value"], b64("baz"));

    // Errors: etcd's body and grpc-gateway's status.
    let (code, text) = call(
        &addr,
        "POST",
        "/v3/kv/put",
        Some(&format!(r#"{{"key": "{}", "lease": "4660"}}"#, b64("x"))),
    );
    assert_eq!(code, 404, "{text}");
    let error: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(error["error"], "etcdserver: requested lease not found");
    assert_eq!(error["message"], "etcdserver: requested lease not found");
    assert_eq!(error["code"], 5);
    let (code, _) = call(&addr, "POST", "/v3/kv/range", Some("{not json"));
    assert_eq!(code, 400);

    // Leases: grant, attach, time to live with keys, keep alive, revoke (the key goes).
    let grant = post(&addr, "/v3/lease/grant", r#"{"TTL": "60"}"#);
    let id = grant["ID"].as_str().expect("an ID").to_string();
    assert_eq!(grant["TTL"], "60", "{grant}");
    post(
        &addr,
        "/v3/kv/put",
        &format!(
            r#"{{"key": "{}", "value": "{}", "lease": "{id}"}}"#,
            b64("leased"),
            b64("v")
        ),
    );
    let ttl = post(
        &addr,
        "/v3/lease/timetolive",
        &format!(r#"{{"ID": "{id}", "keys": true}}"#),
    );
    assert_eq!(ttl["grantedTTL"], "60", "{ttl}");
    assert_eq!(ttl["keys"][0], b64("leased"));
    let (code, text) = call(
        &addr,
        "POST",
        "/v3/lease/keepalive",
        Some(&format!(r#"{{"ID": "{id}"}}"#)),
    );
    assert_eq!(code, 200, "{text}");
    let kept: Value = serde_json::from_str(text.trim()).expect("one JSON line");
    assert_eq!(kept["result"]["ID"], id.as_str(), "{text}");
    assert_eq!(kept["result"]["TTL"], "60");
    post(&addr, "/v3/lease/revoke", &format!(r#"{{"ID": "{id}"}}"#));
    let range = post(
        &addr,
        "/v3/kv/range",
        &format!(r#"{{"key": "{}"}}"#, b64("leased")),
    );
    assert!(
        range.get("kvs").is_none(),
        "the revoked lease's key is gone: {range}"
    );

    // Lock and election.
    let grant = post(&addr, "/v3/lease/grant", r#"{"TTL": "60"}"#);
    let lease = grant["ID"].as_str().expect("an ID").to_string();
    let locked = post(
        &addr,
        "/v3/lock/lock",
        &format!(r#"{{"name": "{}", "lease": "{lease}"}}"#, b64("job")),
    );
    let lock_key = locked["key"].as_str().expect("a key").to_string();
    let lease_hex = format!("{:x}", lease.parse::<i64>().expect("a number"));
    assert_eq!(lock_key, b64(&format!("job/{lease_hex}")));
    post(
        &addr,
        "/v3/lock/unlock",
        &format!(r#"{{"key": "{lock_key}"}}"#),
    );
    let won = post(
        &addr,
        "/v3/election/campaign",
        &format!(
            r#"{{"name": "{}", "lease": "{lease}", "value": "{}"}}"#,
            b64("db"),
            b64("primary-1")
        ),
    );
    let leader = post(
        &addr,
        "/v3/election/leader",
        &format!(r#"{{"name": "{}"}}"#, b64("db")),
    );
    assert_eq!(leader["kv"]["value"], b64("primary-1"), "{leader}");
    // Observe streams `{"result": ...}` lines; the first is the current leader.
    let (mut observer, observed) = stream(
        &addr,
        "/v3/election/observe",
        &format!(r#"{{"name": "{}"}}"#, b64("db")),
    );
    let first = next_json(&observed);
    let _ = observer.kill();
    let _ = observer.wait();
    assert_eq!(first["result"]["kv"]["value"], b64("primary-1"), "{first}");
    post(
        &addr,
        "/v3/election/resign",
        &serde_json::json!({ "leader": won["leader"] }).to_string(),
    );
    let (code, text) = call(
        &addr,
        "POST",
        "/v3/election/leader",
        Some(&format!(r#"{{"name": "{}"}}"#, b64("db"))),
    );
    assert_eq!(code, 404, "{text}");
    assert!(text.contains("election: no leader"), "{text}");

    // Watch: a create request in the body, then `{"result": ...}` lines: created, then events.
    let (mut watcher, watched) = stream(
        &addr,
        "/v3/watch",
        &format!(
            r#"{{"create_request": {{"key": "{}", "range_end": "{}", "prev_kv": true}}}}"#,
            b64("w/"),
            b64("w0")
        ),
    );
    let created = next_json(&watched);
    assert_eq!(created["result"]["created"], true, "{created}");
    post(
        &addr,
        "/v3/kv/put",
        &format!(r#"{{"key": "{}", "value": "{}"}}"#, b64("w/a"), b64("1")),
    );
    post(
        &addr,
        "/v3/kv/deleterange",
        &format!(r#"{{"key": "{}"}}"#, b64("w/a")),
    );
    let mut events = Vec::new();
    while events.len() < 2 {
        let line = next_json(&watched);
        events.extend(
            line["result"]["events"]
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
    }
    let _ = watcher.kill();
    let _ = watcher.wait();
    assert_eq!(events[0]["kv"]["key"], b64("w/a"), "{events:?}");
    assert_eq!(events[0]["kv"]["value"], b64("1"));
    assert!(
        events[0].get("type").is_none(),
        "PUT is the default type: {events:?}"
    );
    assert_eq!(events[1]["type"], "DELETE", "{events:?}");
    assert_eq!(events[1]["prev_kv"]["value"], b64("1"), "{events:?}");
}
