//! A MariaDB/MySQL store's `time_zone`: the zone its `DATETIME` columns'
//! local times are in.

use chrono_tz::Tz;

/// Parses an IANA zone name (`Europe/Berlin`, `UTC`). `None` for UTC
/// itself, so that the default changes nothing; an unknown name is an
/// error that says what is accepted.
pub fn parse_time_zone(name: &str) -> Result<Option<Tz>, String> {
    let tz: Tz = name.parse().map_err(|_| {
        format!("unknown time zone {name:?}: use an IANA name such as \"Europe/Berlin\" or \"UTC\"")
    })?;
    Ok(match tz {
        Tz::UTC | Tz::Etc__UTC | Tz::Etc__UCT | Tz::UCT | Tz::Etc__Zulu | Tz::Zulu => None,
        other => Some(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_time_zone("UTC"), Ok(None));
        assert_eq!(
            parse_time_zone("Europe/Berlin"),
            Ok(Some(Tz::Europe__Berlin))
        );
        assert!(parse_time_zone("Mars/Olympus")
            .unwrap_err()
            .contains("Mars/Olympus"));
    }
}
