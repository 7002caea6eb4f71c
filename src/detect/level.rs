//! The rise-at-once, fall-slowly hysteresis every reason uses.

pub use crate::vocab::{Level, Reason};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Tx,
    Rx,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Tx => "tx",
            Direction::Rx => "rx",
        }
    }
}

/// A level that rises at once to what a window shows and drops back one level
/// after `clear` consecutive windows below it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hysteresis {
    pub level: Level,
    below: u32,
}

impl Hysteresis {
    /// Feeds one window's level; true when the level changed.
    pub fn update(&mut self, window: Level, clear: u32) -> bool {
        if window > self.level {
            self.level = window;
            self.below = 0;
            true
        } else if window < self.level {
            self.below += 1;
            if self.below >= clear {
                self.level = self.level.down();
                self.below = 0;
                true
            } else {
                false
            }
        } else {
            self.below = 0;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rises_at_once_and_falls_one_level_per_clear_run() {
        let mut h = Hysteresis::default();
        assert!(h.update(Level::High, 3));
        assert_eq!(h.level, Level::High);
        assert!(!h.update(Level::Low, 3));
        assert!(!h.update(Level::Low, 3));
        assert!(h.update(Level::Low, 3));
        assert_eq!(h.level, Level::Medium);
        // A window at the current level restarts the count.
        assert!(!h.update(Level::Low, 3));
        assert!(!h.update(Level::Medium, 3));
        assert!(!h.update(Level::Low, 3));
        assert!(!h.update(Level::Low, 3));
        assert!(h.update(Level::Low, 3));
        assert_eq!(h.level, Level::Low);
    }
}
