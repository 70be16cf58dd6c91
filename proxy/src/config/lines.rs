//! Maps a key path in a YAML document (`pools.api.servers.1.address`) to the line it is on.
//!
//! serde reports the line of syntax and type errors itself, but the checks that span several
//! keys (duplicate ids, routes to missing pools) run after deserialisation, when positions are
//! gone. This index recovers them from the parser's events so every error names a line.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

/// Line numbers (1-based) of every key and sequence item in a document, by dotted path.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
    /// Mapping keys that appear twice in one mapping, with the line of the repetition.
    /// YAML forbids them, but parsers keep the last one silently.
    pub duplicates: Vec<(String, usize)>,
}

enum Frame {
    /// Inside a mapping; `key` is the pending key once read.
    Map { path: String, key: Option<String> },
    /// Inside a sequence; `next` is the index of the next item.
    Seq { path: String, next: usize },
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

impl LineIndex {
    /// Builds the index. A document the parser rejects gives an empty index: serde reports
    /// that error with its own line.
    pub fn build(text: &str) -> Self {
        let mut lines = HashMap::new();
        let mut duplicates = Vec::new();
        let mut stack: Vec<Frame> = Vec::new();
        let mut parser = Parser::new_from_str(text);
        while let Ok((event, mark)) = parser.next_token() {
            let line = mark.line();
            // The path of the node this event starts, when it starts one.
            let mut node_path: Option<String> = None;
            let starts_node = matches!(
                event,
                Event::Scalar(..) | Event::MappingStart(..) | Event::SequenceStart(..) | Event::Alias(..)
            );
            if starts_node {
                match stack.last_mut() {
                    Some(Frame::Map { path, key }) => match key.take() {
                        None => {
                            // This node is a key.
                            if let Event::Scalar(k, ..) = &event {
                                let p = join(path, k);
                                match lines.entry(p) {
                                    Entry::Occupied(e) => duplicates.push((e.key().clone(), line)),
                                    Entry::Vacant(e) => {
                                        e.insert(line);
                                    }
                                }
                                *key = Some(k.clone());
                            } else {
                                *key = Some(String::from("?"));
                            }
                            continue_after_key(&event, &mut stack);
                            continue;
                        }
                        Some(k) => node_path = Some(join(path, &k)),
                    },
                    Some(Frame::Seq { path, next }) => {
                        let p = join(path, &next.to_string());
                        *next += 1;
                        lines.entry(p.clone()).or_insert(line);
                        node_path = Some(p);
                    }
                    None => node_path = Some(String::new()),
                }
            }
            match event {
                Event::MappingStart(..) => stack.push(Frame::Map {
                    path: node_path.unwrap_or_default(),
                    key: None,
                }),
                Event::SequenceStart(..) => stack.push(Frame::Seq {
                    path: node_path.unwrap_or_default(),
                    next: 0,
                }),
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                }
                Event::StreamEnd => break,
                _ => {}
            }
        }
        LineIndex { lines, duplicates }
    }

    /// The line of `path`, or of its nearest ancestor that has one.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => return None,
            }
        }
    }
}

/// Complex keys (a mapping used as a key) are rare and never valid in our schema; skip them
/// by pushing a frame that swallows the key's content.
fn continue_after_key(event: &Event, stack: &mut Vec<Frame>) {
    match event {
        Event::MappingStart(..) => stack.push(Frame::Map {
            path: "?".into(),
            key: None,
        }),
        Event::SequenceStart(..) => stack.push(Frame::Seq {
            path: "?".into(),
            next: 0,
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_keys_and_items() {
        let doc = "pools:\n  api:\n    servers:\n      - { id: a, address: x }\n      - id: b\n        address: y\nroutes: []\n";
        let idx = LineIndex::build(doc);
        assert_eq!(idx.line("pools"), Some(1));
        assert_eq!(idx.line("pools.api"), Some(2));
        assert_eq!(idx.line("pools.api.servers.0"), Some(4));
        assert_eq!(idx.line("pools.api.servers.0.address"), Some(4));
        assert_eq!(idx.line("pools.api.servers.1.id"), Some(5));
        assert_eq!(idx.line("pools.api.servers.1.address"), Some(6));
        assert_eq!(idx.line("routes"), Some(7));
        // Unknown leaf falls back to its parent.
        assert_eq!(idx.line("pools.api.servers.1.weight"), Some(5));
        assert!(idx.duplicates.is_empty());
    }

    #[test]
    fn reports_repeated_keys_with_their_line() {
        let doc = "pools:\n  api: {}\n  api: {}\nroutes: []\nroutes: []\n";
        let idx = LineIndex::build(doc);
        assert_eq!(
            idx.duplicates,
            vec![("pools.api".to_string(), 3), ("routes".to_string(), 5)]
        );
    }
}
