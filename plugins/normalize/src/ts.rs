//! Timestamps to RFC 3339 UTC with a `Z`, keeping the fraction as given.

/// Parses `YYYY-MM-DD`, or a date and time with `T` or a space between them,
/// optional seconds and fraction, and an optional `Z` or `±HH:MM` offset (no
/// offset means UTC). Returns the instant in UTC as `YYYY-MM-DDTHH:MM:SS[.f]Z`
/// with the fraction's trailing zeros trimmed.
pub fn to_utc_rfc3339(text: &str) -> Result<String, String> {
    let bad = |what: &str| format!("`{text}` is not a timestamp: {what}");
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let s = b.get(from..from + len)?;
        s.iter().all(u8::is_ascii_digit).then(|| std::str::from_utf8(s).ok()?.parse().ok())?
    };
    let (year, month, day) = match (num(0, 4), b.get(4), num(5, 2), b.get(7), num(8, 2)) {
        (Some(y), Some(b'-'), Some(m), Some(b'-'), Some(d)) => (y, m, d),
        _ => return Err(bad("expected a date YYYY-MM-DD")),
    };
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    let mut pos = 10;
    let (mut hour, mut minute, mut second, mut fraction) = (0, 0, 0, "");
    let mut offset_seconds = 0;
    if pos < b.len() {
        if !matches!(b[pos], b'T' | b't' | b' ') {
            return Err(bad("expected `T` after the date"));
        }
        match (num(pos + 1, 2), b.get(pos + 3), num(pos + 4, 2)) {
            (Some(h), Some(b':'), Some(m)) => (hour, minute) = (h, m),
            _ => return Err(bad("expected a time HH:MM")),
        }
        pos += 6;
        if b.get(pos) == Some(&b':') {
            second = num(pos + 1, 2).ok_or_else(|| bad("expected seconds SS"))?;
            pos += 3;
            if b.get(pos) == Some(&b'.') {
                let digits = b[pos + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
                if digits == 0 {
                    return Err(bad("expected digits after `.`"));
                }
                fraction = text[pos + 1..pos + 1 + digits].trim_end_matches('0');
                pos += 1 + digits;
            }
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(bad("no such time"));
        }
        match b.get(pos) {
            None => {}
            Some(b'Z' | b'z') if pos + 1 == b.len() => {}
            Some(&sign @ (b'+' | b'-')) => {
                let (h, m) = match (num(pos + 1, 2), b.get(pos + 3), b.len() - pos) {
                    (Some(h), None, 3) => (h, 0),
                    (Some(h), Some(b':'), 6) => (h, num(pos + 4, 2).ok_or_else(|| bad("bad offset"))?),
                    (Some(h), Some(_), 5) => (h, num(pos + 3, 2).ok_or_else(|| bad("bad offset"))?),
                    _ => return Err(bad("bad offset")),
                };
                if h > 23 || m > 59 {
                    return Err(bad("bad offset"));
                }
                offset_seconds = (h * 3600 + m * 60) * if sign == b'-' { -1 } else { 1 };
            }
            Some(_) => return Err(bad("unexpected text after the time")),
        }
    }
    let local = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    let utc = local - offset_seconds;
    let (days, secs) = (utc.div_euclid(86_400), utc.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let mut out = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if !fraction.is_empty() {
        out.push('.');
        out.push_str(fraction);
    }
    out.push('Z');
    Ok(out)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (proleptic Gregorian), after H. Hinnant.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::to_utc_rfc3339 as ts;

    #[test]
    fn contract_examples() {
        assert_eq!(ts("2025-02-22T08:56:14.049848+00:00").unwrap(), "2025-02-22T08:56:14.049848Z");
        assert_eq!(ts("2025-03-01T10:15:00Z").unwrap(), "2025-03-01T10:15:00Z");
        assert_eq!(ts("2025-03-01T10:16:30.250000").unwrap(), "2025-03-01T10:16:30.25Z");
        assert_eq!(ts("2025-03-01T10:17:05+01:00").unwrap(), "2025-03-01T09:17:05Z");
        assert_eq!(ts("2020-01-01").unwrap(), "2020-01-01T00:00:00Z");
        assert_eq!(ts("2020-01-01T00:00:00.000Z").unwrap(), "2020-01-01T00:00:00Z");
    }

    #[test]
    fn offsets_cross_days_months_and_years() {
        assert_eq!(ts("2025-01-01T00:30:00+01:00").unwrap(), "2024-12-31T23:30:00Z");
        assert_eq!(ts("2024-02-28T23:00:00-02:00").unwrap(), "2024-02-29T01:00:00Z");
        assert_eq!(ts("2025-03-01 10:15").unwrap(), "2025-03-01T10:15:00Z");
        assert_eq!(ts("2025-03-01T10:15:00+0530").unwrap(), "2025-03-01T04:45:00Z");
        assert_eq!(ts("2025-03-01T10:15:00-07").unwrap(), "2025-03-01T17:15:00Z");
    }

    #[test]
    fn bad_timestamps_say_why() {
        assert_eq!(ts("yesterday").unwrap_err(), "`yesterday` is not a timestamp: expected a date YYYY-MM-DD");
        assert_eq!(ts("2025-02-30").unwrap_err(), "`2025-02-30` is not a timestamp: no such date");
        assert_eq!(ts("2025-02-03T25:00:00Z").unwrap_err(), "`2025-02-03T25:00:00Z` is not a timestamp: no such time");
        assert!(ts("2025-02-03T10:00:00Zjunk").is_err());
        assert!(ts("2025-02-03T10:00:00.Z").is_err());
        assert!(ts("2025-02-03X").is_err());
    }
}
