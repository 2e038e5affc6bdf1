//! Resource limits, their defaults and bounds, and the size and duration
//! syntax the CLI and config file accept (`512M`, `1G`, `30s`, `10m`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ApiError;

pub const MIB: u64 = 1024 * 1024;
pub const GIB: u64 = 1024 * MIB;

/// Default memory limit: 1 GiB.
pub const DEFAULT_MEMORY_BYTES: u64 = GIB;
/// Default CPU limit: one CPU's worth of time.
pub const DEFAULT_CPUS: f64 = 1.0;
/// Default process/thread limit.
pub const DEFAULT_PIDS: u32 = 1024;
/// Default cap on the writable layer: 1 GiB.
pub const DEFAULT_DISK_BYTES: u64 = GIB;

pub const MIN_MEMORY_BYTES: u64 = 16 * MIB;
pub const MAX_MEMORY_BYTES: u64 = 1024 * GIB;
pub const MIN_CPUS: f64 = 0.01;
pub const MAX_CPUS: f64 = 1024.0;
pub const MIN_PIDS: u32 = 8;
pub const MAX_PIDS: u32 = 4_194_304;
pub const MIN_DISK_BYTES: u64 = MIB;
pub const MAX_DISK_BYTES: u64 = 1024 * GIB;
/// The longest TTL or idle timeout accepted: 30 days.
pub const MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;

/// Limits in force on a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pids: u32,
    pub disk_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            cpus: DEFAULT_CPUS,
            pids: DEFAULT_PIDS,
            disk_bytes: DEFAULT_DISK_BYTES,
        }
    }
}

/// Limits as requested; absent fields take the daemon's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub pids: Option<u32>,
    #[serde(default)]
    pub disk_bytes: Option<u64>,
}

impl LimitsRequest {
    /// Fill absent fields from `defaults` and check every bound.
    pub fn resolve(&self, defaults: &Limits) -> Result<Limits, ApiError> {
        let l = Limits {
            memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
            cpus: self.cpus.unwrap_or(defaults.cpus),
            pids: self.pids.unwrap_or(defaults.pids),
            disk_bytes: self.disk_bytes.unwrap_or(defaults.disk_bytes),
        };
        l.validate()?;
        Ok(l)
    }
}

impl Limits {
    pub fn validate(&self) -> Result<(), ApiError> {
        if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&self.memory_bytes) {
            return Err(ApiError::invalid(format!(
                "memory limit {} is outside {}..={}",
                format_size(self.memory_bytes),
                format_size(MIN_MEMORY_BYTES),
                format_size(MAX_MEMORY_BYTES)
            )));
        }
        if !self.cpus.is_finite() || !(MIN_CPUS..=MAX_CPUS).contains(&self.cpus) {
            return Err(ApiError::invalid(format!(
                "cpu limit {} is outside {MIN_CPUS}..={MAX_CPUS}",
                self.cpus
            )));
        }
        if !(MIN_PIDS..=MAX_PIDS).contains(&self.pids) {
            return Err(ApiError::invalid(format!(
                "pids limit {} is outside {MIN_PIDS}..={MAX_PIDS}",
                self.pids
            )));
        }
        if !(MIN_DISK_BYTES..=MAX_DISK_BYTES).contains(&self.disk_bytes) {
            return Err(ApiError::invalid(format!(
                "disk limit {} is outside {}..={}",
                format_size(self.disk_bytes),
                format_size(MIN_DISK_BYTES),
                format_size(MAX_DISK_BYTES)
            )));
        }
        Ok(())
    }
}

/// Parse a size: a number with an optional binary suffix `K`, `M`, `G`, `T`
/// (also `KiB`, `MB`, ...; all powers of 1024). A bare number is bytes.
pub fn parse_size(s: &str) -> Result<u64, ApiError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        ApiError::invalid(format!(
            "invalid size {s:?}: use a number with K, M, G or T (e.g. 512M)"
        ))
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => 1024 * GIB,
        _ => return Err(bad()),
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 0.0 || v > u64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    Ok(v as u64)
}

/// Format bytes the way `parse_size` reads them back.
pub fn format_size(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("T", 1024 * GIB), ("G", GIB), ("M", MIB), ("K", 1024)];
    for (u, m) in UNITS {
        if b >= m && b.is_multiple_of(m) {
            return format!("{}{u}", b / m);
        }
    }
    for (u, m) in UNITS {
        if b >= m {
            return format!("{:.1}{u}", b as f64 / m as f64);
        }
    }
    format!("{b}B")
}

/// Parse a duration: a number with `ms`, `s`, `m`, `h` or `d` (seconds when bare),
/// or several joined (`1h30m`). Returns seconds, fractional.
pub fn parse_duration(s: &str) -> Result<f64, ApiError> {
    let bad = || ApiError::invalid(format!("invalid duration {s:?}: use e.g. 30s, 10m, 1h30m"));
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = t.parse::<f64>() {
        return if n.is_finite() && n >= 0.0 {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let mut total = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(split);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let ulen = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(ulen);
        let mult = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        total += n * mult;
        rest = next;
    }
    if total.is_finite() {
        Ok(total)
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 * MIB);
        assert_eq!(parse_size("1G").unwrap(), GIB);
        assert_eq!(parse_size("1.5g").unwrap(), GIB + GIB / 2);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2MiB").unwrap(), 2 * MIB);
        for bad in ["", "M", "12X", "-1G", "1e400", "1.2.3M"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(format_size(512 * MIB), "512M");
        assert_eq!(format_size(3), "3B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), 30.0);
        assert_eq!(parse_duration("10m").unwrap(), 600.0);
        assert_eq!(parse_duration("1h30m").unwrap(), 5400.0);
        assert_eq!(parse_duration("250ms").unwrap(), 0.25);
        assert_eq!(parse_duration("5").unwrap(), 5.0);
        for bad in ["", "s", "10x", "-5", "inf", "1h-"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limit_bounds() {
        let d = Limits::default();
        assert!(LimitsRequest::default().resolve(&d).is_ok());
        let absurd = [
            LimitsRequest {
                memory_bytes: Some(1),
                ..Default::default()
            },
            LimitsRequest {
                memory_bytes: Some(u64::MAX),
                ..Default::default()
            },
            LimitsRequest {
                cpus: Some(0.0),
                ..Default::default()
            },
            LimitsRequest {
                cpus: Some(f64::NAN),
                ..Default::default()
            },
            LimitsRequest {
                pids: Some(0),
                ..Default::default()
            },
            LimitsRequest {
                disk_bytes: Some(0),
                ..Default::default()
            },
        ];
        for r in absurd {
            assert!(r.resolve(&d).is_err(), "{r:?}");
        }
    }
}
