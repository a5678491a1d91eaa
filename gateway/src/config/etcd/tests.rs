use super::*;

const FILE: &str =
    "gateway:\n  config_provider: etcd\n  etcd: { host: [\"http://127.0.0.1:2379\"] }\n";

fn objects(pairs: &[(&str, &str)]) -> Objects {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn run(objs: &Objects) -> Result<Assembled<Config>, ConfigError> {
    assemble(FILE, None, &|_| None, "/apisix", objs, &mut |c| Ok(c))
}

#[test]
fn apisix_admin_values_become_the_config() {
    let objs = objects(&[
        ("/apisix/routes", "init_dir"),
        (
            "/apisix/upstreams/1",
            r#"{"id":"1","nodes":{"127.0.0.1:8080":1},"type":"roundrobin","create_time":1700000000,"update_time":1700000000}"#,
        ),
        (
            "/apisix/routes/r1",
            r#"{"uri":"/a","upstream_id":"1","create_time":1,"update_time":2}"#,
        ),
        (
            "/apisix/routes/2",
            r#"{"id":2,"uri":"/b","upstream":{"nodes":{"127.0.0.1:8081":1}}}"#,
        ),
    ]);
    let a = run(&objs).expect("valid");
    assert!(a.skipped.is_empty(), "{:?}", a.skipped);
    let ids: Vec<&str> = a.value.routes.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["2", "r1"]);
    assert_eq!(a.value.upstreams[0].id, "1");
}

#[test]
fn a_bad_object_is_skipped_and_named_by_key() {
    let objs = objects(&[
        (
            "/apisix/routes/good",
            r#"{"uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}}}"#,
        ),
        ("/apisix/routes/typo", r#"{"urii":"/a"}"#),
        ("/apisix/routes/notjson", "{"),
        (
            "/apisix/routes/badvalue",
            r#"{"uri":"no-slash","upstream":{"nodes":{"127.0.0.1:1":1}}}"#,
        ),
        (
            "/apisix/routes/idclash",
            r#"{"id":"other","uri":"/x","upstream":{"nodes":{"127.0.0.1:1":1}}}"#,
        ),
        ("/apisix/ssls/1", r#"{"cert":"x"}"#),
    ]);
    let a = run(&objs).expect("the good route serves");
    assert_eq!(a.value.routes.len(), 1);
    assert_eq!(a.value.routes[0].id, "good");
    let keys: Vec<&str> = a.skipped.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "/apisix/routes/badvalue",
            "/apisix/routes/idclash",
            "/apisix/routes/notjson",
            "/apisix/routes/typo",
            "/apisix/ssls/1"
        ]
    );
    let typo = &a.skipped[3].problems.join(" ");
    assert!(typo.contains("urii"), "{typo}");
    let bad = &a.skipped[0].problems.join(" ");
    assert!(bad.starts_with("uri"), "{bad}");
}

#[test]
fn a_reference_to_a_skipped_object_skips_the_referrer_too() {
    let objs = objects(&[
        (
            "/apisix/upstreams/u",
            r#"{"nodes":{"127.0.0.1:1":1},"scheme":"kafka"}"#,
        ),
        ("/apisix/routes/r", r#"{"uri":"/a","upstream_id":"u"}"#),
        (
            "/apisix/routes/ok",
            r#"{"uri":"/b","upstream":{"nodes":{"127.0.0.1:1":1}}}"#,
        ),
    ]);
    let a = run(&objs).expect("valid");
    let keys: Vec<&str> = a.skipped.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["/apisix/routes/r", "/apisix/upstreams/u"]);
    assert!(a.skipped[0].problems.join(" ").contains("upstream_id"));
    assert_eq!(a.value.routes.len(), 1);
}

#[test]
fn a_publish_problem_skips_the_object_it_names() {
    let objs = objects(&[
        (
            "/apisix/routes/a",
            r#"{"uri":"/a","upstream":{"nodes":{"127.0.0.1:1":1}}}"#,
        ),
        (
            "/apisix/routes/b",
            r#"{"uri":"/b","upstream":{"nodes":{"127.0.0.1:2":1}}}"#,
        ),
    ]);
    // A finish step that refuses the second route's inline upstream, as Published::build does
    // for a node that does not resolve.
    let a = assemble(FILE, None, &|_| None, "/apisix", &objs, &mut |c| match c
        .upstreams
        .iter()
        .position(|u| u.id == "route:b")
    {
        Some(i) => Err(format!("upstreams[{i}].nodes: cannot resolve 127.0.0.1:2")),
        None => Ok(c),
    })
    .expect("route a serves");
    assert_eq!(a.value.routes.len(), 1);
    assert_eq!(a.skipped[0].key, "/apisix/routes/b");
    assert!(a.skipped[0].problems[0].contains("cannot resolve"));
}

#[test]
fn objects_in_the_file_are_refused_with_the_etcd_provider() {
    let text = format!(
        "{FILE}routes:\n  - uri: /a\n    upstream: {{ nodes: {{ \"127.0.0.1:1\": 1 }} }}\n"
    );
    let e = assemble(
        &text,
        None,
        &|_| None,
        "/apisix",
        &Objects::new(),
        &mut |c| Ok(c),
    )
    .err()
    .expect("refused");
    assert_eq!(e.problems[0].path, "routes");
    let e = crate::config::load_str(&text).expect_err("refused at load too");
    assert!(e.to_string().contains("come from etcd"), "{e}");
}

#[test]
fn a_gateway_problem_refuses_everything() {
    let text = "gateway:\n  config_provider: etcd\n  etcd: { host: [\"https://x:1\"] }\n";
    let e = crate::config::load_str(text).expect_err("refused");
    assert!(e.to_string().contains("gateway.etcd.host[0]"), "{e}");
}
