//! What a lookup answered with, as the `x-cache` header says it.

/// `x-cache`: ordered so that the worst of a batch is the maximum
/// (stale over miss over hit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CacheStatus {
    /// Served from a tier without waiting on the origin.
    Hit,
    /// This request waited on an origin load (its own or one it joined).
    Miss,
    /// Served past its freshness by the fail-safe.
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::CacheStatus::*;

    #[test]
    fn the_worst_status_is_the_maximum() {
        assert_eq!([Hit, Miss, Hit].into_iter().max(), Some(Miss));
        assert_eq!([Miss, Stale, Hit].into_iter().max(), Some(Stale));
        assert_eq!(Stale.as_str(), "stale");
    }
}
