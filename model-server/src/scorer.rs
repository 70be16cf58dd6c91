//! The scoring library: load an ONNX latency model, check it against the contract of
//! `docs/ml.md`, and score batches of feature rows. The model server and the discrete-event
//! model (`nb-bench --simulate`) both use it, so nothing here knows about HTTP.
//!
//! Invariants a loaded [`Model`] guarantees:
//!
//! - its metadata carries `nb_features` (names and units, in row order, unique names),
//!   `nb_version`, `nb_trained_at`, `nb_training_rows` and `nb_holdout`;
//! - its only input is `features`, `float32 [N, F]` with F the number of features;
//! - its only outputs are `latency_ms` and `p_fail`, `float32 [N]` or `[N, 1]`;
//! - [`Model::score`] makes one ONNX Runtime call per batch and returns one finite value per
//!   row and output, in row order.
//!
//! ONNX Runtime is a native library loaded at run time (`ort`'s `load-dynamic`): the build needs
//! no network and no C++ toolchain. [`runtime_library`] says where it is found; the library is
//! loaded and the `ort` environment built once per process ([`runtime`]).

use std::fmt;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::session::Session;
use ort::value::{Outlet, TensorElementType, TensorRef, ValueType};
use serde::{Deserialize, Serialize};

/// Environment variable naming the ONNX Runtime shared library; overrides the search.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";
/// Name of the model's only input.
pub const INPUT: &str = "features";
/// Name of the predicted-latency output.
pub const OUTPUT_LATENCY: &str = "latency_ms";
/// Name of the failure-probability output.
pub const OUTPUT_P_FAIL: &str = "p_fail";

/// Metadata keys of the contract.
pub mod keys {
    pub const FEATURES: &str = "nb_features";
    pub const VERSION: &str = "nb_version";
    pub const TRAINED_AT: &str = "nb_trained_at";
    pub const TRAINING_ROWS: &str = "nb_training_rows";
    pub const HOLDOUT: &str = "nb_holdout";
}

/// One column of a feature row: its name and unit (`count`, `bool`, `ms`, `ratio`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    pub unit: String,
}

impl Feature {
    pub fn new(name: impl Into<String>, unit: impl Into<String>) -> Feature {
        Feature {
            name: name.into(),
            unit: unit.into(),
        }
    }
}

/// What a model says about itself (its metadata), as `GET /version` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelInfo {
    pub version: String,
    pub features: Vec<Feature>,
    pub trained_at: String,
    pub training_rows: u64,
    pub holdout: serde_json::Value,
}

/// One prediction per row, in row order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scores {
    pub latency_ms: Vec<f32>,
    pub p_fail: Vec<f32>,
}

/// Why a model could not be loaded or could not score.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The ONNX Runtime library was not found or did not initialise.
    #[error("ONNX Runtime unavailable: {0}")]
    Runtime(String),
    #[error("cannot read model file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// ONNX Runtime refused the file (not ONNX, unsupported operator, …).
    #[error("{origin}: not a loadable ONNX model: {message}")]
    Onnx { origin: String, message: String },
    /// A metadata key of the contract is missing or malformed.
    #[error("{origin}: metadata `{key}`: {reason}")]
    Metadata {
        origin: String,
        key: &'static str,
        reason: String,
    },
    /// Inputs or outputs differ from the contract.
    #[error("{origin}: graph: {reason}")]
    Graph { origin: String, reason: String },
    /// The model loaded but did not give finite outputs for a row of zeros.
    #[error("{origin}: probe failed: {reason}")]
    Probe { origin: String, reason: String },
    /// The caller's rows are not `n_rows` rows of the model's width.
    #[error("{len} values do not make {n_rows} rows of {width} features")]
    Shape { len: usize, n_rows: usize, width: usize },
    /// A value of a row is NaN or infinite.
    #[error("rows[{row}][{column}] ({feature}) is {value}, not a finite number")]
    NonFinite {
        row: usize,
        column: usize,
        feature: String,
        value: f32,
    },
    /// ONNX Runtime failed during a run, or the outputs broke the contract.
    #[error("scoring failed: {0}")]
    Run(String),
}

/// How a request's feature list differs from the model's. The first difference is reported,
/// in this order of checks: unknown names, duplicates, missing names, order, units.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureMismatch {
    #[error("unknown feature `{name}` at features[{index}]; the model's features are {expected}")]
    Unknown {
        index: usize,
        name: String,
        expected: String,
    },
    #[error("feature `{name}` appears twice (features[{first}] and features[{second}])")]
    Duplicate { name: String, first: usize, second: usize },
    #[error("missing feature `{name}`; the model's features are {expected}")]
    Missing { name: String, expected: String },
    #[error(
        "wrong order: features[{index}] is `{got}` but the model expects `{want}` there; the model's order is {expected}"
    )]
    Misplaced {
        index: usize,
        got: String,
        want: String,
        expected: String,
    },
    #[error("unit mismatch: feature `{name}` is in `{got}` but the model expects `{want}`")]
    Unit { name: String, got: String, want: String },
}

/// Checks that `request` names the model's features (`model`) in the same order with the
/// same units.
pub fn check_features(model: &[Feature], request: &[Feature]) -> Result<(), FeatureMismatch> {
    let expected = || {
        let names: Vec<&str> = model.iter().map(|f| f.name.as_str()).collect();
        format!("[{}]", names.join(", "))
    };
    for (index, f) in request.iter().enumerate() {
        if !model.iter().any(|m| m.name == f.name) {
            return Err(FeatureMismatch::Unknown {
                index,
                name: f.name.clone(),
                expected: expected(),
            });
        }
        if let Some(first) = request[..index].iter().position(|g| g.name == f.name) {
            return Err(FeatureMismatch::Duplicate {
                name: f.name.clone(),
                first,
                second: index,
            });
        }
    }
    if let Some(m) = model.iter().find(|m| !request.iter().any(|f| f.name == m.name)) {
        return Err(FeatureMismatch::Missing {
            name: m.name.clone(),
            expected: expected(),
        });
    }
    // Same set of unique names, same length: compare position by position.
    for (index, (f, m)) in request.iter().zip(model).enumerate() {
        if f.name != m.name {
            return Err(FeatureMismatch::Misplaced {
                index,
                got: f.name.clone(),
                want: m.name.clone(),
                expected: expected(),
            });
        }
        if f.unit != m.unit {
            return Err(FeatureMismatch::Unit {
                name: f.name.clone(),
                got: f.unit.clone(),
                want: m.unit.clone(),
            });
        }
    }
    Ok(())
}

/// Where the ONNX Runtime shared library is: `$ORT_DYLIB_PATH` when set, else the first
/// `onnxruntime/capi/libonnxruntime.so*` of a PyPI `onnxruntime` wheel installed in
/// `model-server/training/.venv` (the training pipeline's virtualenv, which the setup script
/// creates), searched from the current directory and its ancestors, the executable's ancestors,
/// and this crate's workspace.
pub fn runtime_library() -> Result<PathBuf, ModelError> {
    if let Some(p) = std::env::var_os(DYLIB_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(ModelError::Runtime(format!(
                "{DYLIB_ENV}={} is not a file",
                p.display()
            )))
        };
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).map(Path::to_path_buf));
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    roots.push(manifest.to_path_buf());
    if let Some(workspace) = manifest.parent() {
        roots.push(workspace.to_path_buf());
    }
    let mut seen = Vec::new();
    for root in roots {
        for venv in [root.join("model-server/training/.venv"), root.join("training/.venv")] {
            if seen.contains(&venv) {
                continue;
            }
            if let Some(lib) = library_in_venv(&venv) {
                return Ok(lib);
            }
            seen.push(venv);
        }
    }
    Err(ModelError::Runtime(format!(
        "libonnxruntime.so not found: set {DYLIB_ENV}, or install the `onnxruntime` wheel in \
         model-server/training/.venv (scripts set it up); searched from {} and {}",
        std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "?".into()),
        manifest.display()
    )))
}

/// `venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*`, the highest name first.
fn library_in_venv(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    let mut found = Vec::new();
    for py in std::fs::read_dir(lib).ok()?.flatten() {
        if !py.file_name().to_string_lossy().starts_with("python3") {
            continue;
        }
        let capi = py.path().join("site-packages/onnxruntime/capi");
        let Ok(entries) = std::fs::read_dir(&capi) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("libonnxruntime.so") && e.path().is_file() {
                found.push(e.path());
            }
        }
    }
    found.sort();
    found.pop()
}

/// The process-wide `ort` environment, built once from [`runtime_library`]. Until that
/// succeeds every call searches again, so a server started before the library was installed
/// recovers at its next reload.
pub fn runtime() -> Result<&'static Environment, ModelError> {
    static RUNTIME: OnceLock<Environment> = OnceLock::new();
    static INIT: Mutex<()> = Mutex::new(());
    if let Some(env) = RUNTIME.get() {
        return Ok(env);
    }
    let _one_at_a_time = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = RUNTIME.get() {
        return Ok(env);
    }
    let lib = runtime_library()?;
    let builder =
        ort::init_from(&lib).map_err(|e| ModelError::Runtime(format!("cannot load {}: {e}", lib.display())))?;
    let env = builder
        .with_name("model-server")
        .build()
        .map_err(|e| ModelError::Runtime(format!("{}: {e}", lib.display())))?;
    tracing::info!(library = %lib.display(), "ONNX Runtime loaded");
    Ok(RUNTIME.get_or_init(|| env))
}

/// A loaded, checked model.
///
/// `Sync`: scoring locks the session. `ort`'s `Session::run` takes `&mut self` because
/// ONNX Runtime's `Run` is not thread safe for every execution provider, so runs are
/// serialised by a mutex. A run of the shipped tree ensembles takes microseconds and the
/// proxy sends one batch per refresh, so the lock is not a bottleneck; a caller needing
/// parallel runs loads one `Model` per thread.
pub struct Model {
    session: Mutex<Session>,
    info: ModelInfo,
    origin: String,
    digest: u64,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("origin", &self.origin)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Reads, loads and checks the model at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Model, ModelError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Model::from_bytes(&bytes, &path.display().to_string())
    }

    /// Loads and checks a model from its bytes; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Model, ModelError> {
        let env = runtime()?;
        fn onnx<R>(origin: &str) -> impl Fn(ort::Error<R>) -> ModelError + '_ {
            move |e| ModelError::Onnx {
                origin: origin.to_string(),
                message: e.to_string(),
            }
        }
        // One intra-op thread: a batch is small and the server shares its cores with the
        // proxy; ONNX Runtime's own pool would spin threads against it.
        let session = Session::builder(env)
            .map_err(onnx(origin))?
            .with_intra_threads(1)
            .map_err(onnx(origin))?
            .with_inter_threads(1)
            .map_err(onnx(origin))?
            .commit_from_memory(bytes)
            .map_err(onnx(origin))?;
        let info = read_metadata(&session, origin)?;
        check_graph(&session, info.features.len(), origin)?;
        Ok(Model {
            session: Mutex::new(session),
            info,
            origin: origin.to_string(),
            digest: digest(bytes),
        })
    }

    /// The features rows must carry, in order.
    pub fn features(&self) -> &[Feature] {
        &self.info.features
    }

    /// The model's version (`nb_version`).
    pub fn version(&self) -> &str {
        &self.info.version
    }

    /// Everything the metadata says.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// A hash of the file's bytes: two loads of the same bytes have the same digest.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Checks a caller's feature list against this model's ([`check_features`]).
    pub fn check_features(&self, request: &[Feature]) -> Result<(), FeatureMismatch> {
        check_features(&self.info.features, request)
    }

    /// Scores `n_rows` rows laid out one after the other in `rows` (row-major, each row in
    /// [`Model::features`] order), in one ONNX Runtime call.
    pub fn score(&self, rows: &[f32], n_rows: usize) -> Result<Scores, ModelError> {
        let width = self.info.features.len();
        if n_rows.checked_mul(width) != Some(rows.len()) {
            return Err(ModelError::Shape {
                len: rows.len(),
                n_rows,
                width,
            });
        }
        if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite {
                row: i / width,
                column: i % width,
                feature: self.info.features[i % width].name.clone(),
                value: rows[i],
            });
        }
        if n_rows == 0 {
            return Ok(Scores::default());
        }
        let run = |e: ort::Error| ModelError::Run(e.to_string());
        let input = TensorRef::from_array_view(([n_rows, width], rows)).map_err(run)?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| ModelError::Run("a previous run panicked".into()))?;
        let outputs = session.run(ort::inputs![INPUT => input]).map_err(run)?;
        let take = |name: &str| -> Result<Vec<f32>, ModelError> {
            let value = outputs
                .get(name)
                .ok_or_else(|| ModelError::Run(format!("no output `{name}`")))?;
            let (shape, data) = value.try_extract_tensor::<f32>().map_err(run)?;
            let ok = match **shape {
                [n] => n == n_rows as i64,
                [n, 1] => n == n_rows as i64,
                _ => false,
            };
            if !ok || data.len() != n_rows {
                return Err(ModelError::Run(format!(
                    "output `{name}` has shape {:?} for {n_rows} rows",
                    &**shape
                )));
            }
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(ModelError::Run(format!("output `{name}` is {} for row {i}", data[i])));
            }
            Ok(data.to_vec())
        };
        Ok(Scores {
            latency_ms: take(OUTPUT_LATENCY)?,
            p_fail: take(OUTPUT_P_FAIL)?,
        })
    }

    /// Scores one row of zeros; a model that cannot is not swapped in.
    pub fn probe(&self) -> Result<(), ModelError> {
        let zeros = vec![0.0; self.info.features.len()];
        self.score(&zeros, 1).map(drop).map_err(|e| ModelError::Probe {
            origin: self.origin.clone(),
            reason: e.to_string(),
        })
    }
}

/// A hash of a model file's bytes, as [`Model::digest`] gives it: SipHash with fixed keys,
/// stable within a process, which is all a change check needs (not a cryptographic digest).
pub fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

fn read_metadata(session: &Session, origin: &str) -> Result<ModelInfo, ModelError> {
    let meta = session.metadata().map_err(|e| ModelError::Onnx {
        origin: origin.to_string(),
        message: format!("cannot read metadata: {e}"),
    })?;
    let err = |key: &'static str, reason: String| ModelError::Metadata {
        origin: origin.to_string(),
        key,
        reason,
    };
    let get = |key: &'static str| -> Result<String, ModelError> {
        match meta.custom(key) {
            Some(v) if !v.trim().is_empty() => Ok(v),
            Some(_) => Err(err(key, "is empty".into())),
            None => Err(err(key, "is missing".into())),
        }
    };

    let features: Vec<Feature> = serde_json::from_str(&get(keys::FEATURES)?).map_err(|e| {
        err(
            keys::FEATURES,
            format!("not a JSON array of {{\"name\", \"unit\"}}: {e}"),
        )
    })?;
    if features.is_empty() {
        return Err(err(keys::FEATURES, "lists no feature".into()));
    }
    for (i, f) in features.iter().enumerate() {
        if f.name.is_empty() || f.unit.is_empty() {
            return Err(err(keys::FEATURES, format!("entry {i} has an empty name or unit")));
        }
        if features[..i].iter().any(|g| g.name == f.name) {
            return Err(err(keys::FEATURES, format!("`{}` is listed twice", f.name)));
        }
    }
    let version = get(keys::VERSION)?;
    let trained_at = get(keys::TRAINED_AT)?;
    let rows = get(keys::TRAINING_ROWS)?;
    let training_rows = rows
        .trim()
        .parse::<u64>()
        .map_err(|e| err(keys::TRAINING_ROWS, format!("`{rows}` is not a row count: {e}")))?;
    let holdout: serde_json::Value =
        serde_json::from_str(&get(keys::HOLDOUT)?).map_err(|e| err(keys::HOLDOUT, format!("not JSON: {e}")))?;
    if !holdout.is_object() {
        return Err(err(keys::HOLDOUT, "not a JSON object".into()));
    }
    Ok(ModelInfo {
        version,
        features,
        trained_at,
        training_rows,
        holdout,
    })
}

fn check_graph(session: &Session, width: usize, origin: &str) -> Result<(), ModelError> {
    let err = |reason: String| ModelError::Graph {
        origin: origin.to_string(),
        reason,
    };
    let float_shape = |o: &Outlet| match o.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } => Some(shape.to_vec()),
        _ => None,
    };
    let names = |outlets: &[Outlet]| {
        outlets
            .iter()
            .map(|o| format!("`{}`", o.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };

    let inputs = session.inputs();
    let [input] = inputs else {
        return Err(err(format!("expected one input `{INPUT}`, found {}", names(inputs))));
    };
    if input.name() != INPUT {
        return Err(err(format!("input is `{}`, expected `{INPUT}`", input.name())));
    }
    match float_shape(input).as_deref() {
        Some([_, f]) if *f == width as i64 || *f < 0 => {}
        Some(shape) => {
            return Err(err(format!(
                "input `{INPUT}` has shape {shape:?}, expected [N, {width}] for the {width} features of `{}`",
                keys::FEATURES
            )))
        }
        None => return Err(err(format!("input `{INPUT}` is not a float32 tensor"))),
    }

    let outputs = session.outputs();
    let mut found = [false; 2];
    for o in outputs {
        let slot = match o.name() {
            OUTPUT_LATENCY => 0,
            OUTPUT_P_FAIL => 1,
            other => {
                return Err(err(format!(
                    "unexpected output `{other}`; expected `{OUTPUT_LATENCY}` and `{OUTPUT_P_FAIL}`"
                )))
            }
        };
        found[slot] = true;
        match float_shape(o).as_deref() {
            Some([_]) => {}
            Some([_, k]) if *k == 1 || *k < 0 => {}
            Some(shape) => {
                return Err(err(format!(
                    "output `{}` has shape {shape:?}, expected [N] or [N, 1]",
                    o.name()
                )))
            }
            None => return Err(err(format!("output `{}` is not a float32 tensor", o.name()))),
        }
    }
    for (present, name) in found.iter().zip([OUTPUT_LATENCY, OUTPUT_P_FAIL]) {
        if !present {
            return Err(err(format!("no output `{name}` (outputs: {})", names(outputs))));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Vec<Feature> {
        vec![
            Feature::new("a", "count"),
            Feature::new("b", "ms"),
            Feature::new("c", "ratio"),
        ]
    }

    #[test]
    fn same_features_pass() {
        assert_eq!(check_features(&model(), &model()), Ok(()));
    }

    #[test]
    fn mismatches_name_the_first_difference() {
        let mut r = model();
        r[1].name = "z".into();
        let e = check_features(&model(), &r).expect_err("unknown");
        assert!(e.to_string().contains("unknown feature `z` at features[1]"), "{e}");

        let r = model()[..2].to_vec();
        let e = check_features(&model(), &r).expect_err("missing");
        assert!(e.to_string().contains("missing feature `c`"), "{e}");

        let mut r = model();
        r.swap(0, 2);
        let e = check_features(&model(), &r).expect_err("order");
        assert!(e.to_string().contains("features[0] is `c`"), "{e}");
        assert!(e.to_string().contains("expects `a`"), "{e}");

        let mut r = model();
        r[1].unit = "s".into();
        let e = check_features(&model(), &r).expect_err("unit");
        assert!(
            e.to_string().contains("`b` is in `s` but the model expects `ms`"),
            "{e}"
        );

        let mut r = model();
        r.push(Feature::new("a", "count"));
        let e = check_features(&model(), &r).expect_err("dup");
        assert!(e.to_string().contains("`a` appears twice"), "{e}");
    }
}
