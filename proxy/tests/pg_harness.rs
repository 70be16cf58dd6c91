//! Tests of the throwaway-PostgreSQL harness in `common/pg.rs`: clusters start (also many at
//! once), hand out distinct working databases, survive stop/restart with their data, and leave
//! no server process or directory behind: not after a drop, a panic, or the test process dying.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::pg::{pid_alive, PgCluster};
use tokio_postgres::{Client, NoTls};

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn select_1(url: &str) -> i32 {
    let client = connect(url).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
    client.query_one("SELECT 1", &[]).await.expect("SELECT 1").get(0)
}

/// Waits until `pid` is gone and `dir` removed (process exit and reaping take a moment).
async fn assert_cleaned_up(pid: u32, dir: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while (pid_alive(pid) || dir.exists()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!pid_alive(pid), "{what}: postmaster {pid} still running");
    assert!(!dir.exists(), "{what}: {} still exists", dir.display());
}

#[tokio::test]
async fn a_cluster_starts_and_serves_a_new_database() {
    let t = Instant::now();
    let pg = PgCluster::start().await;
    let started = t.elapsed();
    let t = Instant::now();
    let url = pg.create_database("select one").await;
    eprintln!("cluster start {started:?}, create_database {:?}: {url}", t.elapsed());
    assert!(url.starts_with("postgres://"), "{url}");
    assert_eq!(select_1(&url).await, 1, "log:\n{}", pg.log());
    // The URL is also what the service's pool is configured with.
    let cfg: tokio_postgres::Config = url.parse().expect("URL parses as tokio_postgres::Config");
    let name = url.rsplit('/').next().expect("db name");
    assert_eq!(cfg.get_dbname(), Some(name));
    assert!(name.starts_with("nbt_select_one_"), "{name}");
    let client = connect(&url).await.expect("connect");
    let current: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .expect("current_database")
        .get(0);
    assert_eq!(current, name);
    assert_eq!(select_1(&pg.admin_url()).await, 1);
}

#[tokio::test]
async fn two_databases_are_distinct() {
    let pg = PgCluster::start().await;
    let a = pg.create_database("same").await;
    let b = pg.create_database("same").await;
    assert_ne!(a, b);
    let ca = connect(&a).await.expect("connect a");
    ca.batch_execute("CREATE TABLE only_in_a (x int)")
        .await
        .expect("create table");
    let cb = connect(&b).await.expect("connect b");
    let found: Option<String> = cb
        .query_one("SELECT to_regclass('only_in_a')::text", &[])
        .await
        .expect("to_regclass")
        .get(0);
    assert_eq!(found, None, "a table made in {a} is visible in {b}");
    let found: Option<String> = ca
        .query_one("SELECT to_regclass('only_in_a')::text", &[])
        .await
        .expect("to_regclass")
        .get(0);
    assert_eq!(found.as_deref(), Some("only_in_a"));
}

#[tokio::test]
async fn stop_refuses_connections_and_restart_brings_back_the_data() {
    let pg = PgCluster::start().await;
    if !pg.can_restart() {
        eprintln!("skipped: DATABASE_URL server cannot be restarted");
        return;
    }
    let url = pg.create_database("restart").await;
    let c = connect(&url).await.expect("connect");
    c.batch_execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before stop')")
        .await
        .expect("create table");
    let port = pg.port();

    pg.stop();
    assert!(c.query_one("SELECT 1", &[]).await.is_err(), "old session survived stop");
    let refused = tokio::time::timeout(Duration::from_secs(5), connect(&url)).await;
    assert!(
        matches!(refused, Ok(Err(_))),
        "connecting to a stopped server must fail at once: {refused:?}"
    );
    assert!(pg.log().contains("fast shutdown"), "log:\n{}", pg.log());

    pg.restart();
    assert_eq!(pg.port(), port);
    let c = connect(&url)
        .await
        .unwrap_or_else(|e| panic!("after restart: {e}\n{}", pg.log()));
    let v: String = c.query_one("SELECT v FROM kept", &[]).await.expect("select").get(0);
    assert_eq!(v, "before stop");

    // restart() of a running server stops it first.
    pg.restart();
    assert_eq!(select_1(&url).await, 1);
}

#[tokio::test]
async fn drop_stops_the_server_and_removes_the_directory() {
    let pg = PgCluster::start().await;
    if !pg.can_restart() {
        eprintln!("skipped: DATABASE_URL server is not ours");
        return;
    }
    let pid = pg.postmaster_pid().expect("postmaster.pid");
    assert!(pid_alive(pid), "postmaster {pid} not running");
    let root = pg.root_dir().expect("root dir");
    let url = pg.create_database("drop").await;
    let _open_session = connect(&url).await.expect("connect");
    drop(pg);
    assert_cleaned_up(pid, &root, "after drop").await;
}

#[tokio::test]
async fn a_panicking_test_leaves_nothing_behind() {
    if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        eprintln!("skipped: DATABASE_URL is set");
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let test = common::on_own_thread(move || async move {
        let pg = PgCluster::start().await;
        tx.send((pg.postmaster_pid(), pg.root_dir())).expect("send");
        panic!("deliberate panic with a running cluster");
    });
    assert!(test.join().is_err(), "the thread should have panicked");
    let (pid, root) = rx.recv().expect("cluster info");
    let (pid, root) = (pid.expect("pid"), root.expect("root"));
    assert_cleaned_up(pid, &root, "after panic").await;
}

/// Runs only as the child of `a_dying_test_process_leaves_nothing_behind`.
#[tokio::test]
async fn child_process_exits_without_dropping() {
    if std::env::var_os("NB_PG_HARNESS_CHILD").is_none() {
        return;
    }
    let pg = PgCluster::start().await;
    let root = pg.root_dir().expect("root");
    println!("CLUSTER {} {}", pg.postmaster_pid().expect("pid"), root.display());
    // No destructors run.
    std::process::exit(0);
}

#[tokio::test]
async fn a_dying_test_process_leaves_nothing_behind() {
    if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        eprintln!("skipped: DATABASE_URL is set");
        return;
    }
    let out = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_process_exits_without_dropping",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("NB_PG_HARNESS_CHILD", "1")
        .output()
        .await
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CLUSTER ").map(|(_, rest)| rest.trim()))
        .unwrap_or_else(|| {
            panic!(
                "child printed no cluster: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let (pid, root) = line.split_once(' ').expect("pid and dir");
    let pid: u32 = pid.parse().expect("pid");
    assert_cleaned_up(pid, Path::new(root), "after the process exited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_start_in_parallel() {
    const N: usize = 6;
    let t = Instant::now();
    let clusters = futures::future::join_all((0..N).map(|_| PgCluster::start())).await;
    eprintln!("{N} clusters started in parallel in {:?}", t.elapsed());
    if !clusters[0].can_restart() {
        return;
    }
    let mut ports: Vec<_> = clusters.iter().map(|c| c.port().expect("port")).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), N, "ports not distinct");
    for pg in &clusters {
        let url = pg.create_database("parallel").await;
        assert_eq!(select_1(&url).await, 1, "log:\n{}", pg.log());
    }
}

#[test]
fn cluster_can_be_shared_across_tasks() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<PgCluster>();
}
