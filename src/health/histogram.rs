//! A log-linear histogram of integer values (HDR-style): values below 32
//! are exact, larger ones land in one of 32 buckets per power of two, so a
//! bucket spans at most 1/32 of its values (3 %). Recording is a
//! leading-zero count and a few additions.

/// Sub-buckets per power of two (a power of two itself).
const SUB: u64 = 32;
const SUB_BITS: u32 = SUB.trailing_zeros();
/// Buckets for the whole `u64` range.
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// Counts of values, with their exact sum and maximum.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    sum: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            sum: 0,
            max: 0,
        }
    }
}

/// The bucket `value` falls in.
fn index(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros();
    let shift = exp - SUB_BITS;
    // mantissa in [SUB, 2 * SUB)
    let mantissa = value >> shift;
    (shift as usize + 1) * SUB as usize + (mantissa - SUB) as usize
}

/// The lowest and highest value of bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let shift = i / SUB - 1;
    let mantissa = SUB + i % SUB;
    let low = mantissa << shift;
    (low, low + ((1u64 << shift) - 1))
}

impl Histogram {
    /// Counts one value.
    #[inline]
    pub fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        // Wraps after 584 years of nanoseconds.
        self.sum = self.sum.wrapping_add(value);
        self.max = self.max.max(value);
    }

    /// How many values were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the values.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// The largest value (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The non-empty buckets, lowest first: `(index, low, high, count)`,
    /// bounds inclusive. The index names a bucket across readings.
    pub fn buckets(&self) -> Vec<(usize, u64, u64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| {
                let (low, high) = bounds(i);
                (i, low, high, *c)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range() {
        let mut next = 0;
        for i in 0..BUCKETS {
            let (low, high) = bounds(i);
            assert_eq!(low, next, "bucket {i}");
            assert!(high >= low);
            assert_eq!(index(low), i);
            assert_eq!(index(high), i);
            next = high.wrapping_add(1);
        }
        assert_eq!(next, 0, "the last bucket ends at u64::MAX");
    }

    #[test]
    fn a_bucket_spans_at_most_a_thirty_second_of_its_values() {
        for v in [33, 1_000, 123_456_789, 50_000_000, u64::MAX / 3] {
            let (low, high) = bounds(index(v));
            assert!((high - low) as f64 <= low as f64 / SUB as f64, "{v}");
        }
    }

    #[test]
    fn counts_sum_max() {
        let mut h = Histogram::default();
        assert_eq!((h.count(), h.max()), (0, 0));
        assert!(h.buckets().is_empty());
        for v in [5, 5, 1_000_000, 40] {
            h.record(v);
        }
        assert_eq!((h.count(), h.sum(), h.max()), (4, 1_000_050, 1_000_000));
        let buckets = h.buckets();
        assert_eq!(buckets[0], (5, 5, 5, 2));
        assert_eq!(buckets.iter().map(|b| b.3).sum::<u64>(), 4);
        let (_, low, high, _) = buckets[2];
        assert!(low <= 1_000_000 && 1_000_000 <= high);
    }
}
