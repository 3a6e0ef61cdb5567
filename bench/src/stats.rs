//! Small statistics and /proc helpers, kept pure so they can be unit tested.

use std::time::Duration;

/// The p-th percentile (0..=100) by nearest rank on a copy of `samples`; `None` when empty.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let p = p.clamp(0.0, 100.0);
    // Nearest rank: the smallest value with at least p% of the samples at or below it.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// p50 and p99 of a sample set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantiles {
    pub p50: Duration,
    pub p99: Duration,
    pub n: usize,
}

pub fn quantiles(samples: &[Duration]) -> Option<Quantiles> {
    Some(Quantiles {
        p50: percentile(samples, 50.0)?,
        p99: percentile(samples, 99.0)?,
        n: samples.len(),
    })
}

/// `VmRSS` in bytes from the text of `/proc/<pid>/status`.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    parse_status_bytes(status, "VmRSS:")
}

/// A size field (`VmRSS:`, `RssAnon:`…) of `/proc/<pid>/status`, in bytes.
pub fn parse_status_bytes(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let mut parts = line[field.len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let unit = parts.next().unwrap_or("kB");
    let factor = match unit {
        "kB" => 1024,
        "mB" | "MB" => 1024 * 1024,
        "B" => 1,
        _ => return None,
    };
    Some(value * factor)
}

pub fn rss_of(pid: u32) -> Option<u64> {
    parse_vmrss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The anonymous part of a process's RSS (its heap and stacks, without the pages of its binary
/// and libraries, which vary with what code ran and what the page cache holds).
pub fn anon_of(pid: u32) -> Option<u64> {
    parse_status_bytes(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?, "RssAnon:")
}

/// Sum of VmRSS over a process and all its descendants (Node's workers, npm wrappers).
pub fn rss_of_tree(pid: u32) -> Option<u64> {
    let mut total = rss_of(pid)?;
    for child in children_of(pid) {
        total += rss_of_tree(child).unwrap_or(0);
    }
    Some(total)
}

fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let path = task.path().join("children");
            if let Ok(text) = std::fs::read_to_string(path) {
                out.extend(text.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// `TcpExt: ListenOverflows` from the text of `/proc/net/netstat` (a header line of names,
/// then a line of values).
pub fn parse_listen_overflows(netstat: &str) -> Option<u64> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names.split_whitespace().position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

pub fn listen_overflows() -> Option<u64> {
    parse_listen_overflows(&std::fs::read_to_string("/proc/net/netstat").ok()?)
}

/// `1234` → `"1.2 µs"`-style human durations with three significant-ish digits.
pub fn fmt_duration(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

pub fn fmt_bytes(b: f64) -> String {
    if b.abs() < 1024.0 {
        format!("{b:.0} B")
    } else if b.abs() < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    }
}

pub fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k/s", r / 1e3)
    } else {
        format!("{r:.0} /s")
    }
}

/// The first unsigned integer right after `marker` in `text`.
pub fn number_after(text: &str, marker: &str) -> Option<u64> {
    let start = text.find(marker)? + marker.len();
    let digits: &str = &text[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&samples, 50.0), Some(ms(50)));
        assert_eq!(percentile(&samples, 99.0), Some(ms(99)));
        assert_eq!(percentile(&samples, 100.0), Some(ms(100)));
        assert_eq!(percentile(&samples, 0.0), Some(ms(1)));
        assert_eq!(percentile(&[ms(7)], 99.0), Some(ms(7)));
        assert_eq!(percentile(&[], 50.0), None);
        let q = quantiles(&[ms(3), ms(1), ms(2)]).unwrap();
        assert_eq!((q.p50, q.p99, q.n), (ms(2), ms(3), 3));
    }

    #[test]
    fn vmrss_from_proc_status() {
        let status = "Name:\ttako\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss(status), Some(12345 * 1024));
        assert_eq!(parse_vmrss("Name: x\n"), None);
        assert!(rss_of(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn listen_overflows_from_netstat() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 5 17 17\nIpExt: A\nIpExt: 1\n";
        assert_eq!(parse_listen_overflows(text), Some(17));
        assert_eq!(parse_listen_overflows("IpExt: A\nIpExt: 1\n"), None);
    }

    #[test]
    fn numbers_after_markers() {
        assert_eq!(
            number_after(r#"[null,null,"notifications","shout",{"s":42}]"#, "\"s\":"),
            Some(42)
        );
        assert_eq!(number_after(r#"42["msg","t=7"]"#, "t="), Some(7));
        assert_eq!(number_after("nothing here", "t="), None);
        assert_eq!(number_after("t=", "t="), None);
    }

    #[test]
    fn formatting() {
        assert_eq!(fmt_duration(Duration::from_micros(250)), "250 µs");
        assert_eq!(fmt_duration(Duration::from_micros(2500)), "2.50 ms");
        assert_eq!(fmt_duration(Duration::from_millis(2500)), "2.50 s");
        assert_eq!(fmt_bytes(2048.0), "2.0 KiB");
        assert_eq!(fmt_rate(1_500_000.0), "1.50 M/s");
    }
}
