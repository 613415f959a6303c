//! Cross-checks the validator behind `parse` against serde_json on mutated inputs, and checks that
//! the public entry point survives hostile nesting without recursion.

use codex_bus_protocol::{parse, EnvelopeError, Message, SessionPath};
use serde::de::IgnoredAny;

/// Deterministic xorshift so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":[1,2.5,-3e-2]}}}"#,
    r#"{"jsonrpc":"2.0","id":"a\"b\\c\u00e9\uD83D\uDE00","result":{"ok":true,"v":null,"e":false}}"#,
    r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"Invalid Request"}}"#,
    r#"[{"id":1,"method":"a"},{"id":2,"method":"b"},[],{},0,-0,1E+2,"\/\b\f\n\r\t"]"#,
    r#" { "sessionId" : 12 , "params" : { "sessionId" : "s" } , "pool" : "p" } "#,
    r#"{"a":[[[[[[{"b":[[{}]]}]]]]]],"c":"héllo ✓","d":0.000001,"e":123456789012345678901234567890}"#,
    r#""just a string""#,
    "-12.5e-7",
    "[true,false,null]",
];

/// Bytes that tend to turn valid JSON into almost-valid JSON.
const ALPHABET: &[u8] = b"{}[]\",:0123456789-+.eEtrufalsn \t\r\n\\/u\x00\x1f\x7f\xc3\xa9\xff";

fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    let pick = |rng: &mut Rng| {
        if rng.below(4) == 0 {
            rng.next() as u8
        } else {
            ALPHABET[rng.below(ALPHABET.len())]
        }
    };
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(input.len() + 1);
        match rng.below(5) {
            0 if at < input.len() => input[at] = pick(rng),
            1 if at < input.len() => {
                input.remove(at);
            }
            2 => input.insert(at, pick(rng)),
            3 => input.truncate(at),
            _ => {
                let from = rng.below(input.len() + 1);
                let to = (from + rng.below(8)).min(input.len());
                let piece = input[from..to].to_vec();
                input.splice(at..at, piece);
            }
        }
    }
}

fn serde_accepts(input: &[u8]) -> bool {
    std::str::from_utf8(input).is_ok() && serde_json::from_slice::<IgnoredAny>(input).is_ok()
}

#[test]
fn verdicts_match_serde_json() {
    let path = SessionPath::default();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (mut valid, mut invalid) = (0, 0);
    for round in 0..60_000 {
        let mut input = SEEDS[round % SEEDS.len()].as_bytes().to_vec();
        mutate(&mut rng, &mut input);
        // serde_json stops at 128 levels; stay well below so both judge grammar only.
        if input.iter().filter(|&&c| c == b'[' || c == b'{').count() >= 100 {
            continue;
        }
        let ours = parse(&input, &path) != Err(EnvelopeError::Parse);
        let theirs = serde_accepts(&input);
        assert_eq!(ours, theirs, "input {:?}", String::from_utf8_lossy(&input));
        if ours {
            valid += 1;
        } else {
            invalid += 1;
        }
    }
    // Both verdicts must be well represented, or the comparison proves little.
    assert!(
        valid > 5_000 && invalid > 5_000,
        "valid {valid}, invalid {invalid}"
    );
}

#[test]
fn seeds_classify_as_expected() {
    let path = SessionPath::default();
    for seed in SEEDS {
        assert!(serde_accepts(seed.as_bytes()), "{seed}");
        let got = parse(seed.as_bytes(), &path);
        match seed.trim_start().as_bytes()[0] {
            b'{' => assert!(matches!(got, Ok(Message::Object(_))), "{seed}"),
            b'[' => assert!(matches!(got, Ok(Message::Batch(_))), "{seed}"),
            _ => assert_eq!(got, Err(EnvelopeError::NotObject), "{seed}"),
        }
    }
}

#[test]
fn deep_documents_parse_on_a_small_stack() {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(|| {
            let path = SessionPath::parse("params.sessionId").unwrap();
            let n = 10_000;
            let mut arrays = "[".repeat(n);
            arrays.push_str(&"]".repeat(n));
            assert_eq!(parse(arrays.as_bytes(), &path), Ok(Message::Batch(1)));
            assert_eq!(
                parse(&arrays.as_bytes()[..2 * n - 1], &path),
                Err(EnvelopeError::Parse)
            );

            let mut objects = r#"{"id":1,"params":"#.repeat(n);
            objects.push_str("null");
            objects.push_str(&"}".repeat(n));
            match parse(objects.as_bytes(), &path) {
                Ok(Message::Object(env)) => {
                    assert_eq!(env.id, Some(6..7));
                    assert_eq!(env.session, None);
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(
                parse(&objects.as_bytes()[..objects.len() - 1], &path),
                Err(EnvelopeError::Parse)
            );
        })
        .unwrap()
        .join()
        .unwrap();
}
