//! A pause that doubles for as long as a failure lasts, and starts short again
//! after a success: for the acceptors after an `accept` error such as `EMFILE`
//! (retrying at once would spin), and for the Redis threads between attempts to
//! reach Redis again (hammering a Redis that is restarting helps nobody).

use std::time::Duration;

pub struct Backoff {
    first: Duration,
    longest: Duration,
    next: Duration,
}

impl Backoff {
    /// Pauses from `first`, doubling up to `longest`.
    pub const fn new(first: Duration, longest: Duration) -> Backoff {
        Backoff {
            first,
            longest,
            next: first,
        }
    }

    /// The pause to take now; the next one is twice as long.
    pub fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (pause * 2).min(self.longest);
        pause
    }

    /// A success: the next pause is the first again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_longest_and_start_again_after_a_success() {
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(30));
        let pauses: Vec<u128> = (0..5).map(|_| backoff.pause().as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 30, 30]);
        backoff.reset();
        assert_eq!(backoff.pause(), Duration::from_millis(5));
    }
}
