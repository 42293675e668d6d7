//! Hostile bytes through the parsers that read them first: format sniffing, header reading, metadata stripping
//! and decoding (`ingest::prepare`, and `decode_upright` for `/classify`). Real photos of every accepted format
//! are truncated, bit-flipped, spliced and given huge declared lengths. Every case is refused with an error that
//! the API answers with a 4xx code, or accepted as a valid image that keeps no metadata; none panics.
//! `UPSHOT_FUZZ_CASES` sets the number of cases (default 2000).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use upshot::error::AppError;
use upshot::imaging::WorkingSize;
use upshot::ingest::{self, IngestPolicy, Upload};

use crate::helpers::fixture;

const SEEDS: [&str; 7] =
    ["cat.jpg", "cat-gps-rotated.jpg", "coffee.png", "astronaut.webp", "rocket.gif", "logo-alpha.png", "cat-gps.heic"];

fn policy() -> IngestPolicy {
    // Smaller limits than the defaults, so that huge declared sizes meet them.
    let settings = upshot::config::ImageSettings {
        max_image_width: 4_000,
        max_image_height: 4_000,
        max_image_pixels: 4_000_000,
        max_frames: 100,
        max_animation_pixels: 40_000_000,
        ..Default::default()
    };
    IngestPolicy::new(&settings, WorkingSize { min_short_side: 256, min_long_side: 128 })
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(f64),
    FlipBits(Vec<(f64, u8)>),
    /// Copies a run of the file over another place of it (chunks and segments spliced out of order).
    Splice {
        from: f64,
        to: f64,
        len: usize,
    },
    /// Writes a huge length where a chunk or segment length may stand.
    HugeLength {
        at: f64,
        width: usize,
    },
    Insert {
        at: f64,
        bytes: Vec<u8>,
    },
}

fn position(data: &[u8], fraction: f64) -> usize {
    ((data.len() as f64 * fraction) as usize).min(data.len().saturating_sub(1))
}

fn apply(mut data: Vec<u8>, mutation: &Mutation) -> Vec<u8> {
    match mutation {
        Mutation::Truncate(keep) => data.truncate((data.len() as f64 * keep) as usize),
        // An earlier truncation may have left nothing to flip.
        Mutation::FlipBits(flips) if !data.is_empty() => {
            for &(at, bit) in flips {
                let i = position(&data, at);
                data[i] ^= 1 << (bit % 8);
            }
        }
        Mutation::FlipBits(_) => {}
        Mutation::Splice { from, to, len } => {
            let (from, to) = (position(&data, *from), position(&data, *to));
            let len = (*len).min(data.len() - from).min(data.len() - to);
            let run = data[from..from + len].to_vec();
            data[to..to + len].copy_from_slice(&run);
        }
        Mutation::HugeLength { at, width } => {
            let i = position(&data, *at);
            for byte in data.iter_mut().skip(i).take(*width) {
                *byte = 0xFF;
            }
            if let Some(byte) = data.get_mut(i) {
                *byte = 0x7F;
            }
        }
        Mutation::Insert { at, bytes } => {
            let i = position(&data, *at);
            data.splice(i..i, bytes.iter().copied());
        }
    }
    data
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0.0..1.0f64).prop_map(Mutation::Truncate),
        prop::collection::vec((0.0..1.0f64, any::<u8>()), 1..8).prop_map(Mutation::FlipBits),
        (0.0..1.0f64, 0.0..1.0f64, 1usize..512).prop_map(|(from, to, len)| Mutation::Splice { from, to, len }),
        (0.0..1.0f64, 2usize..5).prop_map(|(at, width)| Mutation::HugeLength { at, width }),
        (0.0..1.0f64, prop::collection::vec(any::<u8>(), 1..64)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

/// The orientation a stored image keeps (a JPEG's one EXIF tag), as a viewer reads it.
fn orientation_of(stored: &[u8]) -> image::metadata::Orientation {
    use image::ImageDecoder;
    let decoder =
        image::ImageReader::new(std::io::Cursor::new(stored)).with_guessed_format().ok().map(|r| r.into_decoder());
    decoder
        .and_then(|d| d.ok())
        .and_then(|mut d| d.orientation().ok())
        .unwrap_or(image::metadata::Orientation::NoTransforms)
}

#[test]
fn hostile_bytes_are_refused_with_a_4xx_or_stored_clean_never_a_panic() {
    let cases = std::env::var("UPSHOT_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let seeds: Vec<Vec<u8>> = SEEDS.iter().map(|name| fixture(name)).collect();
    let policy = policy();
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let (refused, stored) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    runner
        .run(&(0..seeds.len(), prop::collection::vec(mutation(), 1..4)), |(seed, mutations)| {
            let data = mutations.iter().fold(seeds[seed].clone(), apply);
            match ingest::prepare(&Upload::new(data.clone()), &policy) {
                Err(error) => {
                    let status = AppError::from(error).status().code;
                    prop_assert!((400..500).contains(&status), "{} answered {status}", SEEDS[seed]);
                    refused.set(refused.get() + 1);
                }
                Ok(prepared) => {
                    let decoded = match prepared.format {
                        ingest::ImageFormat::Heic => {
                            heifer::decode(&prepared.original).map(drop).map_err(|e| e.to_string())
                        }
                        _ => image::load_from_memory(&prepared.original).map(drop).map_err(|e| e.to_string()),
                    };
                    prop_assert!(decoded.is_ok(), "{}: stored bytes do not decode: {:?}", SEEDS[seed], decoded.err());
                    // Nothing left to strip: no metadata segment or chunk survived, whatever the bytes spell.
                    let orientation = orientation_of(&prepared.original);
                    let again = ingest::sanitize::strip_metadata(&prepared.original, prepared.format, orientation);
                    prop_assert!(
                        again.as_deref() == Ok(&prepared.original[..]),
                        "{}: the stored bytes still carry metadata",
                        SEEDS[seed]
                    );
                    stored.set(stored.get() + 1);
                }
            }
            // `/classify` reads the same bytes without storing them.
            if let Err(error) = ingest::decode_upright(&data, &policy) {
                let status = AppError::from(error).status().code;
                prop_assert!((400..500).contains(&status), "classify: {} answered {status}", SEEDS[seed]);
            }
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    let (refused, stored) = (refused.get(), stored.get());
    eprintln!("fuzz: {cases} cases, {refused} refused with a 4xx, {stored} stored clean, 0 panics");
    assert!(refused > 0 && stored > 0, "the mutations should produce both outcomes");
}
