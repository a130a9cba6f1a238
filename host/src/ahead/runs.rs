//! Sorting a simulation's lines without holding them all: lines gather in
//! memory up to a budget, are sorted and spilled to an unnamed temporary
//! file as a run, and the runs are then merged. A window that fits in the
//! budget never touches the disk.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Seek, Write};

/// Bytes of lines held in memory before a run is spilled.
pub const MEMORY_BUDGET: usize = 64 << 20;

/// Lines with sort keys; a key must not contain a tab, nor a line a newline.
pub struct Runs {
    budget: usize,
    held: Vec<(String, String)>,
    held_bytes: usize,
    spilled: Vec<File>,
}

impl Runs {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            held: Vec::new(),
            held_bytes: 0,
            spilled: Vec::new(),
        }
    }

    pub fn push(&mut self, key: String, line: String) -> io::Result<()> {
        debug_assert!(!key.contains('\t') && !line.contains('\n'));
        self.held_bytes += key.len() + line.len() + 64;
        self.held.push((key, line));
        if self.held_bytes >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    /// How many runs went to disk.
    pub fn spilled(&self) -> usize {
        self.spilled.len()
    }

    fn spill(&mut self) -> io::Result<()> {
        self.held.sort_unstable();
        let mut file = BufWriter::new(tempfile::tempfile()?);
        for (key, line) in self.held.drain(..) {
            writeln!(file, "{key}\t{line}")?;
        }
        let mut file = file.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        self.spilled.push(file);
        self.held_bytes = 0;
        Ok(())
    }

    /// Hands every line to `sink` in key order; stops early when `sink`
    /// returns `false` (the reader went away).
    pub fn drain(mut self, mut sink: impl FnMut(&str) -> bool) -> io::Result<()> {
        if self.spilled.is_empty() {
            self.held.sort_unstable();
            for (_, line) in &self.held {
                if !sink(line) {
                    break;
                }
            }
            return Ok(());
        }
        if !self.held.is_empty() {
            self.spill()?;
        }
        let mut readers: Vec<_> = self.spilled.into_iter().map(BufReader::new).collect();
        let mut heap = BinaryHeap::new();
        for (i, reader) in readers.iter_mut().enumerate() {
            if let Some(record) = next_record(reader)? {
                heap.push(Reverse((record, i)));
            }
        }
        while let Some(Reverse((record, i))) = heap.pop() {
            let line = record.split_once('\t').map_or("", |(_, line)| line);
            if !sink(line) {
                break;
            }
            if let Some(record) = next_record(&mut readers[i])? {
                heap.push(Reverse((record, i)));
            }
        }
        Ok(())
    }
}

/// The next `key\tline` of a run, without its newline.
fn next_record(reader: &mut BufReader<File>) -> io::Result<Option<String>> {
    let mut record = String::new();
    if reader.read_line(&mut record)? == 0 {
        return Ok(None);
    }
    if record.ends_with('\n') {
        record.pop();
    }
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_through(budget: usize, keys: &[u32]) -> (Vec<String>, usize) {
        let mut runs = Runs::new(budget);
        for k in keys {
            runs.push(format!("{k:08}"), format!("line {k}")).unwrap();
        }
        let spilled = runs.spilled();
        let mut out = Vec::new();
        runs.drain(|line| {
            out.push(line.to_string());
            true
        })
        .unwrap();
        (out, spilled)
    }

    #[test]
    fn lines_come_out_in_key_order_whether_spilled_or_not() {
        let keys: Vec<u32> = (0..5_000).map(|i| (i * 7_919) % 5_003).collect();
        let mut expected = keys.clone();
        expected.sort_unstable();
        let expected: Vec<String> = expected.iter().map(|k| format!("line {k}")).collect();

        let (in_memory, spilled) = sorted_through(MEMORY_BUDGET, &keys);
        assert_eq!(spilled, 0);
        assert_eq!(in_memory, expected);

        let (merged, spilled) = sorted_through(10_000, &keys);
        assert!(spilled > 10, "{spilled} runs");
        assert_eq!(merged, expected);
    }

    #[test]
    fn a_sink_that_stops_stops_the_merge() {
        let mut runs = Runs::new(1_000);
        for k in 0..100 {
            runs.push(format!("{k:04}"), format!("{k}")).unwrap();
        }
        let mut seen = 0;
        runs.drain(|_| {
            seen += 1;
            seen < 3
        })
        .unwrap();
        assert_eq!(seen, 3);
    }
}
