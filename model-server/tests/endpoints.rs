#[tokio::test]
async fn health_and_version_answer() {
    let (addr, _task) = model_server::spawn("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("spawn");
    let c = reqwest::Client::new();
    let r = c.get(format!("http://{addr}/health")).send().await.expect("health");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), r#"{"status":"ok"}"#);
    let r = c.get(format!("http://{addr}/version")).send().await.expect("version");
    assert!(r.text().await.expect("body").contains(model_server::VERSION));
    let r = c.post(format!("http://{addr}/health")).send().await.expect("post");
    assert_eq!(r.status(), 405);
    assert_eq!(
        c.get(format!("http://{addr}/nope")).send().await.expect("404").status(),
        404
    );
}
