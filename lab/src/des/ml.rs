//! `ml` in the model: the proxy's scorer loop on the simulated clock, with the real model
//! scored in-process by the model server's own library ([`model_server::scorer`]).
//!
//! Every [`REFRESH_NS`] of simulated time (the proxy's default `ml.refresh_ms`) each
//! backend gets its [`CURVE_LEVELS`] rows from [`nb_strategy::ml::curve_rows`] (the code
//! the proxy's scorer runs), all backends in one batch; the answers become calibrated
//! [`Curve`]s that the picks read until the next refresh, as the proxy's table is. The model
//! server's round trip (about a millisecond on loopback) is not modelled: scores apply at
//! the refresh that asked for them. A pick whose sampled backend has no curve falls back to
//! `ml.fallback`, as in the proxy.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use model_server::scorer::Model;
use nb_strategy::ml::{self, Curve, RowPlan, CURVE_LEVELS};
use nb_strategy::{Load, Params};

/// How often the model re-scores every backend: the proxy's default `ml.refresh_ms`.
pub const REFRESH_NS: u64 = 100_000_000;

/// The model file `ml` runs with when none was set: the shipped one.
pub const DEFAULT_MODEL: &str = "model-server/models/scorer.onnx";

static MODEL_PATH: OnceLock<PathBuf> = OnceLock::new();
static MODEL: OnceLock<Result<Arc<Model>, String>> = OnceLock::new();

/// Sets the model file every simulated `ml` run of this process uses (`nb-bench --model`);
/// only before the first run. `false` when it was set already.
pub fn set_model_path(path: PathBuf) -> bool {
    MODEL_PATH.set(path).is_ok()
}

/// The model file: the one set, else [`DEFAULT_MODEL`] found from the current directory or
/// from this crate's workspace.
pub fn model_path() -> PathBuf {
    if let Some(p) = MODEL_PATH.get() {
        return p.clone();
    }
    let here = PathBuf::from(DEFAULT_MODEL);
    if here.is_file() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(DEFAULT_MODEL)
}

/// The process's model, loaded once.
pub fn model() -> Result<Arc<Model>, String> {
    MODEL
        .get_or_init(|| {
            let path = model_path();
            Model::load(&path)
                .map(Arc::new)
                .map_err(|e| format!("ml: cannot load the model {}: {e}", path.display()))
        })
        .clone()
}

/// The scorer of one simulated run.
pub struct Scorer {
    model: Arc<Model>,
    plan: RowPlan,
    rows: Vec<f32>,
    /// Per backend, the latest curve.
    pub curves: Vec<Option<Curve>>,
    /// Batches scored and rows per batch, for the run's notes.
    pub batches: u64,
}

impl Scorer {
    pub fn new(model: Arc<Model>, backends: usize) -> Result<Scorer, String> {
        let plan = RowPlan::new(model.features().iter().map(|f| (f.name.as_str(), f.unit.as_str())))?;
        Ok(Scorer {
            model,
            plan,
            rows: Vec::new(),
            curves: vec![None; backends],
            batches: 0,
        })
    }

    /// Scores every backend (`loads`, weight 1 each as in the lab's pool) at `now_ns`.
    /// A batch the model refuses leaves the curves as they were.
    pub fn refresh<'a>(&mut self, loads: impl ExactSizeIterator<Item = &'a Load>, now_ns: u64, params: &Params) {
        self.rows.clear();
        let loads: Vec<&Load> = loads.collect();
        for load in &loads {
            for row in ml::curve_rows(load, 1, now_ns, params, true) {
                self.plan.write(&row, &mut self.rows);
            }
        }
        let n = loads.len() * CURVE_LEVELS;
        let Ok(scores) = self.model.score(&self.rows, n) else {
            return;
        };
        self.batches += 1;
        for (b, load) in loads.iter().enumerate() {
            let at = b * CURVE_LEVELS..(b + 1) * CURVE_LEVELS;
            let (lat, pf) = (&scores.latency_ms[at.clone()], &scores.p_fail[at]);
            let c = ml::calibration(load, lat, pf, params, now_ns);
            self.curves[b] =
                Curve::new(lat, pf, params, c).map(|cv| cv.with_scored_queue(ml::scored_queue(load, now_ns, true)));
        }
    }
}
