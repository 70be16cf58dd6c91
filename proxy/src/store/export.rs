//! `neurabalancer export-training`: the `training_requests` view as JSONL, with exactly
//! the columns and encoding of the JSONL request log, so the training pipeline reads
//! either source the same way.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use futures::{pin_mut, TryStreamExt};
use tokio_postgres::error::SqlState;

use super::pg;
use super::record::{cell_from_row, write_json, REQUEST_COLUMNS};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error(
        "the database has no training_requests view: run the proxy once with storage on (or `neurabalancer migrate`)"
    )]
    NoSchema,
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Writes every request that reached a backend in the last `since` to `out` (`-`: standard
/// output), oldest first; returns the number of rows. A file is written under a temporary
/// name and renamed into place when complete.
pub async fn export_training(url: &str, since: Duration, out: &Path) -> Result<u64, ExportError> {
    let client = pg::connect(url).await?;
    let names: Vec<&str> = REQUEST_COLUMNS.iter().map(|c| c.name).collect();
    let sql = format!(
        "SELECT {} FROM training_requests WHERE time >= $1 ORDER BY time, request_id",
        names.join(", ")
    );
    let from = SystemTime::now() - since;
    let stream = client.query_raw(&sql, [&from]).await.map_err(|e| {
        if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
            ExportError::NoSchema
        } else {
            ExportError::Db(e)
        }
    })?;
    pin_mut!(stream);

    let to_stdout = out == Path::new("-");
    let tmp = {
        let mut s = out.as_os_str().to_owned();
        s.push(".partial");
        std::path::PathBuf::from(s)
    };
    let io_err = |source| ExportError::Io {
        path: out.display().to_string(),
        source,
    };
    let mut w: Box<dyn Write> = if to_stdout {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    } else {
        Box::new(std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io_err)?))
    };
    let written = async {
        let mut line = Vec::with_capacity(512);
        let mut n = 0u64;
        while let Some(row) = stream.try_next().await? {
            line.clear();
            let cells = REQUEST_COLUMNS
                .iter()
                .enumerate()
                .map(|(i, c)| cell_from_row(&row, i, c.kind))
                .collect::<Result<Vec<_>, _>>()?;
            write_json(&REQUEST_COLUMNS, &cells, &mut line);
            w.write_all(&line).map_err(io_err)?;
            n += 1;
        }
        w.flush().map_err(io_err)?;
        drop(w);
        if !to_stdout {
            std::fs::rename(&tmp, out).map_err(io_err)?;
        }
        Ok(n)
    }
    .await;
    if written.is_err() && !to_stdout {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
