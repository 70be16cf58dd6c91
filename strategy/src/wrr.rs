//! Smooth weighted round robin (nginx `ngx_http_upstream_get_peer`), precomputed.
//!
//! nginx keeps a mutable `current_weight` per peer and updates all of them under a lock on
//! every pick. The sequence it produces depends only on the weights and is periodic with
//! period Σw (after dividing by the gcd), so we compute one period when the membership
//! changes and walk it with an atomic counter: the same interleaving, no lock on the
//! request path.

/// One period of the smooth weighted round-robin sequence.
#[derive(Debug, Clone)]
pub struct Schedule {
    order: Vec<u32>,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Schedule {
    pub fn build(weights: &[u32]) -> Self {
        let g = weights.iter().copied().filter(|&w| w > 0).fold(0, gcd).max(1);
        let w: Vec<i64> = weights.iter().map(|&x| (x.max(1) / g).max(1) as i64).collect();
        let total: i64 = w.iter().sum();
        let mut current = vec![0i64; w.len()];
        let mut order = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for i in 0..w.len() {
                current[i] += w[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            order.push(best as u32);
        }
        Schedule { order }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The entry at position `at` (mod period).
    pub fn get(&self, at: usize) -> Option<usize> {
        match self.order.len() {
            0 => None,
            n => Some(self.order[at % n] as usize),
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = usize> + '_ {
        self.order.iter().map(|&i| i as usize)
    }
}
