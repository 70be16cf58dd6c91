//! The JSONL request log: one JSON object per request, the columns of
//! [`REQUEST_COLUMNS`](super::record::REQUEST_COLUMNS), rotated by size like logrotate's
//! `size` + `rotate N` (`file` → `file.1` → ... → `file.N`, the oldest removed).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::record::{write_json, RequestRecord, REQUEST_COLUMNS};
use super::{Sink, WriteError};

pub(crate) struct JsonlSink {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: u32,
    buf: Vec<u8>,
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl JsonlSink {
    /// Opens (or creates) the log for appending; fails when it cannot be written.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(JsonlSink {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
            keep,
            buf: Vec::new(),
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            let _ = fs::remove_file(numbered(&self.path, self.keep));
            for n in (1..self.keep).rev() {
                let from = numbered(&self.path, n);
                if from.exists() {
                    fs::rename(&from, numbered(&self.path, n + 1))?;
                }
            }
            fs::rename(&self.path, numbered(&self.path, 1))?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }

    /// Writes whole lines; rotates first when they would take the file past its limit.
    fn append(&mut self, batch: &[Arc<RequestRecord>]) -> std::io::Result<()> {
        self.buf.clear();
        for r in batch {
            write_json(&REQUEST_COLUMNS, &r.cells(), &mut self.buf);
        }
        if self.size > 0 && self.size + self.buf.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&self.buf)?;
        self.size += self.buf.len() as u64;
        Ok(())
    }
}

#[async_trait]
impl Sink for JsonlSink {
    fn name(&self) -> &'static str {
        "jsonl"
    }

    fn own_thread(&self) -> bool {
        true
    }

    async fn write(&mut self, batch: &[Arc<RequestRecord>]) -> Result<(), WriteError> {
        // Blocking file writes, on this sink's own thread.
        self.append(batch)
            .map_err(|e| WriteError::Retry(format!("{}: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> Arc<RequestRecord> {
        Arc::new(RequestRecord {
            time_us: 1_000_000 + i as i64,
            request_id: format!("req-{i:05}"),
            trace_id: None,
            pool: Some("api".into()),
            route: Some("/".into()),
            backend: Some(Arc::new("b".into())),
            backend_address: None,
            method: "GET",
            status: 200,
            error: None,
            latency_us: 10,
            upstream_latency_us: None,
            request_bytes: 0,
            response_bytes: 0,
            retries: 0,
            strategy: None,
            features: None,
            predicted_latency_us: None,
            ml_decided: None,
            ml_fallback: None,
            client_addr: None,
        })
    }

    fn lines(p: &Path) -> Vec<String> {
        fs::read_to_string(p)
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("requests.jsonl");
        let mut line = Vec::new();
        write_json(&REQUEST_COLUMNS, &rec(0).cells(), &mut line);
        let per_line = line.len() as u64;
        // Room for 10 lines per file; 2 rotated files kept.
        let mut sink = JsonlSink::open(&path, per_line * 10, 2).expect("open");
        for chunk in (0..45).collect::<Vec<_>>().chunks(5) {
            let batch: Vec<_> = chunk.iter().map(|&i| rec(i)).collect();
            sink.append(&batch).expect("append");
        }
        // 45 lines: 40..45 current, 30..40 in .1, 20..30 in .2, older ones gone.
        let cur = lines(&path);
        let one = lines(&numbered(&path, 1));
        let two = lines(&numbered(&path, 2));
        assert_eq!((cur.len(), one.len(), two.len()), (5, 10, 10));
        assert!(cur[0].contains("req-00040") && one[0].contains("req-00030") && two[0].contains("req-00020"));
        assert!(!numbered(&path, 3).exists());
        for l in cur.iter().chain(&one).chain(&two) {
            let v: serde_json::Value = serde_json::from_str(l).expect("every line is whole JSON");
            assert_eq!(v.as_object().map(|o| o.len()), Some(REQUEST_COLUMNS.len()));
        }
    }

    #[test]
    fn reopening_appends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.jsonl");
        JsonlSink::open(&path, 1 << 20, 1)
            .expect("open")
            .append(&[rec(1)])
            .expect("append");
        JsonlSink::open(&path, 1 << 20, 1)
            .expect("open")
            .append(&[rec(2)])
            .expect("append");
        assert_eq!(lines(&path).len(), 2);
    }

    #[test]
    fn an_unwritable_path_is_an_error() {
        assert!(JsonlSink::open(Path::new("/nonexistent-dir/x.jsonl"), 4096, 1).is_err());
    }
}
