//! roaring (pure Rust) vs croaring (CRoaring bindings) on the bitmaps of tagcast's bench:
//! 10 M users, each with a Zipf(1) country (50), level (5), lang (20), 1 % vip.
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::time::Instant;

struct Zipf(Vec<f64>);
impl Zipf {
    fn new(n: usize) -> Self {
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = (1..=n).map(|r| { acc += 1.0 / r as f64; acc }).collect();
        for c in &mut cdf { *c /= acc; }
        Zipf(cdf)
    }
    fn sample(&self, rng: &mut StdRng) -> usize {
        let u: f64 = rng.random();
        self.0.partition_point(|c| *c < u).min(self.0.len() - 1)
    }
}

fn median<F: FnMut() -> u64>(reps: usize, mut f: F) -> (f64, u64) {
    let mut t = Vec::with_capacity(reps);
    let mut out = 0;
    for _ in 0..reps {
        let s = Instant::now();
        out = std::hint::black_box(f());
        t.push(s.elapsed().as_secs_f64() * 1e6);
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[reps / 2], out)
}

fn main() {
    let n: u32 = std::env::args().nth(1).map_or(10_000_000, |s| s.parse().unwrap());
    let mut rng = StdRng::seed_from_u64(20261126);
    let (zc, zl, zg) = (Zipf::new(50), Zipf::new(5), Zipf::new(20));
    let mut country = vec![Vec::new(); 50];
    let mut level = vec![Vec::new(); 5];
    let mut lang = vec![Vec::new(); 20];
    let mut vip = Vec::new();
    for u in 0..n {
        country[zc.sample(&mut rng)].push(u);
        level[zl.sample(&mut rng)].push(u);
        lang[zg.sample(&mut rng)].push(u);
        if rng.random::<f64>() < 0.01 { vip.push(u); }
    }
    let r = |v: &Vec<u32>| { let mut b = roaring::RoaringBitmap::from_sorted_iter(v.iter().copied()).unwrap(); b.optimize(); b };
    let c = |v: &Vec<u32>| { let mut b = croaring::Bitmap::of(v); b.run_optimize(); b };
    let t = Instant::now();
    let (rc, rl, rg, rv): (Vec<_>, Vec<_>, Vec<_>, _) = (country.iter().map(r).collect(), level.iter().map(r).collect(), lang.iter().map(r).collect(), r(&vip));
    let r_build = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let (cc, cl, cg, cv): (Vec<_>, Vec<_>, Vec<_>, _) = (country.iter().map(c).collect(), level.iter().map(c).collect(), lang.iter().map(c).collect(), c(&vip));
    let c_build = t.elapsed().as_secs_f64() * 1e3;
    let reps = 200;
    println!("{n} users; build (from sorted ordinals, then run-optimized): roaring {r_build:.0} ms, croaring {c_build:.0} ms");
    let rsize: usize = rc.iter().chain(&rl).chain(&rg).map(|b| b.serialized_size()).sum();
    let csize: usize = cc.iter().chain(&cl).chain(&cg).map(|b| b.get_serialized_size_in_bytes::<croaring::Portable>()).sum();
    println!("portable size of the 75 bitmaps: roaring {:.1} MiB, croaring {:.1} MiB", rsize as f64 / 1048576.0, csize as f64 / 1048576.0);
    let mut row = |name: &str, a: (f64, u64), b: (f64, u64)| {
        assert_eq!(a.1, b.1, "{name}");
        println!("{name:<58} roaring {:>9.1} µs  croaring {:>9.1} µs  roaring/croaring {:.2}  (result {})", a.0, b.0, a.0 / b.0, a.1);
    };
    row("q2 count level:l3 AND country:c3", median(reps, || rl[3].intersection_len(&rc[3])), median(reps, || cl[3].and_cardinality(&cc[3])));
    row("q2 materialized (AND into a new bitmap)", median(reps, || (&rl[3] & &rc[3]).len()), median(reps, || cl[3].and(&cc[3]).cardinality()));
    row("q3 count OR of lang:g5..g9", median(reps, || { let mut acc = rg[5].clone(); for b in &rg[6..10] { acc |= b; } acc.len() }), median(reps, || { let v: Vec<&croaring::Bitmap> = cg[5..10].iter().collect(); croaring::Bitmap::fast_or(&v).cardinality() }));
    row("q5 count (vip - c0) AND (l0 OR l1)", median(reps, || { let a = &rv - &rc[0]; let o = &rl[0] | &rl[1]; a.intersection_len(&o) }), median(reps, || { let a = cv.andnot(&cc[0]); let o = cl[0].or(&cl[1]); a.and_cardinality(&o) }));
    row("level:l0 (44 %) AND NOT country:c0, materialized", median(reps, || (&rl[0] - &rc[0]).len()), median(reps, || cl[0].andnot(&cc[0]).cardinality()));
    row("serialize level:l0 (a broadcast's frozen audience)", median(50, || { let mut v = Vec::new(); rl[0].serialize_into(&mut v).unwrap(); v.len() as u64 }), median(50, || cl[0].serialize::<croaring::Portable>().len() as u64));
    row("iterate the first 1,000 of level:l0 (a ListAudience page)", median(reps, || rl[0].iter().take(1000).map(u64::from).sum()), median(reps, || cl[0].iter().take(1000).map(u64::from).sum()));
}
