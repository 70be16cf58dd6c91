//! The scoring library on its own: the shipped model through the real ONNX Runtime, and
//! models that break the contract.

use model_server::scorer::{self, Model, ModelError};
use model_server::testing::{previous_model, shipped_model};

fn shipped() -> Model {
    Model::load(shipped_model()).expect("shipped model")
}

/// The shipped model's bytes with every `from` replaced by `to` (same length, so the protobuf
/// stays well formed).
fn edited(from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let bytes = std::fs::read(shipped_model()).expect("read");
    let (from, to) = (from.as_bytes(), to.as_bytes());
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut hits = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
            hits += 1;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    assert!(hits > 0, "{} not in the model", String::from_utf8_lossy(from));
    out
}

#[test]
fn the_runtime_library_is_found() {
    let lib = scorer::runtime_library().expect("libonnxruntime");
    assert!(lib.is_file(), "{}", lib.display());
    scorer::runtime().expect("runtime");
}

#[test]
fn the_shipped_model_meets_the_contract() {
    let m = shipped();
    let names: Vec<&str> = m.features().iter().map(|f| f.name.as_str()).collect();
    assert!(names.contains(&"inflight"), "{names:?}");
    assert!(!m.version().is_empty());
    assert!(m.info().training_rows > 0);
    assert!(m.info().holdout.is_object());
    m.probe().expect("probe");
    assert_eq!(m.check_features(m.features()), Ok(()));
    assert_ne!(m.version(), Model::load(previous_model()).expect("previous").version());
}

#[test]
fn a_batch_is_scored_in_one_call_in_row_order() {
    let m = shipped();
    let width = m.features().len();
    let inflight = m
        .features()
        .iter()
        .position(|f| f.name == "inflight")
        .expect("inflight");
    for n in [1, 16, 256] {
        let mut rows = vec![0.0f32; n * width];
        for r in 0..n {
            rows[r * width + inflight] = (r % 16) as f32;
        }
        let s = m.score(&rows, n).expect("score");
        assert_eq!((s.latency_ms.len(), s.p_fail.len()), (n, n));
        assert!(s.latency_ms.iter().all(|l| l.is_finite() && *l > 0.0));
        assert!(s.p_fail.iter().all(|p| (0.0..=1.0).contains(p)));
        let one = m.score(&rows[(n - 1) * width..], 1).expect("one row");
        assert_eq!(one.latency_ms[0], s.latency_ms[n - 1]);
    }
    assert_eq!(m.score(&[], 0).expect("empty").latency_ms, Vec::<f32>::new());
}

#[test]
fn bad_rows_are_refused() {
    let m = shipped();
    let width = m.features().len();
    let e = m.score(&vec![0.0; width + 1], 1).expect_err("shape");
    assert!(matches!(e, ModelError::Shape { .. }), "{e}");
    let mut rows = vec![0.0; 2 * width];
    rows[width + 1] = f32::NAN;
    let e = m.score(&rows, 2).expect_err("nan");
    assert!(e.to_string().starts_with("rows[1][1] ("), "{e}");
    rows[width + 1] = f32::INFINITY;
    assert!(matches!(
        m.score(&rows, 2),
        Err(ModelError::NonFinite { row: 1, column: 1, .. })
    ));
}

#[test]
fn files_that_are_not_models_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Model::load(dir.path().join("absent.onnx")).expect_err("absent");
    assert!(matches!(e, ModelError::Read { .. }), "{e}");
    let e = Model::from_bytes(b"garbage", "garbage").expect_err("garbage");
    assert!(matches!(e, ModelError::Onnx { .. }), "{e}");
}

#[test]
fn models_that_break_the_contract_are_refused() {
    for (from, to, want) in [
        ("nb_version", "nb_vorsion", "metadata `nb_version`: is missing"),
        ("nb_features", "nb_featurez", "metadata `nb_features`: is missing"),
        ("nb_holdout", "nb_holdoux", "metadata `nb_holdout`: is missing"),
        ("latency_ms", "latency_zz", "unexpected output `latency_zz`"),
        ("p_fail", "p_lose", "unexpected output `p_lose`"),
    ] {
        let e = Model::from_bytes(&edited(from, to), "edited").expect_err(want);
        assert!(e.to_string().contains(want), "{from}: {e}");
    }
}

#[test]
fn one_model_scores_from_several_threads() {
    let m = std::sync::Arc::new(shipped());
    let width = m.features().len();
    let rows: Vec<f32> = (0..16 * width).map(|i| (i % 16) as f32).collect();
    let want = m.score(&rows, 16).expect("score");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (m, rows) = (std::sync::Arc::clone(&m), rows.clone());
            std::thread::spawn(move || (0..50).map(|_| m.score(&rows, 16).expect("score")).collect::<Vec<_>>())
        })
        .collect();
    for t in threads {
        for got in t.join().expect("thread") {
            assert_eq!(got, want);
        }
    }
}
