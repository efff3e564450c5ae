//! One authorization decision (text token in, decision out) for a token with six first-party
//! caveats, against the `macaroon` crate's Verifier on the same token and against an
//! Ed25519-signed JWT carrying the same claims.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-tokens cargo bench -p cleave-tokens`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, Criterion};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier as _, VerifyingKey};

use cleave_keys::Key32;
use cleave_tokens::{Macaroon, Op, Pseudonym, RequestContext, RootKey, Store};

const PATIENT: &str = "P1-00112233445566778899aabbccddeeff";
const CERT_HEX: &str = "aa00000000000000000000000000000000000000000000000000000000000001";

fn predicates() -> Vec<String> {
    vec![
        "ops = read,write".into(),
        "stores = clinical".into(),
        format!("patient = {PATIENT}"),
        "expires < 2030-01-01T00:00:00Z".into(),
        format!("cert = sha256:{CERT_HEX}"),
        "net = 10.0.0.0/8".into(),
    ]
}

fn cert() -> [u8; 32] {
    let mut c = [0u8; 32];
    c[0] = 0xaa;
    c[31] = 1;
    c
}

fn ctx() -> RequestContext {
    RequestContext::new(
        UNIX_EPOCH + Duration::from_secs(1_767_225_600),
        Op::Read,
        Store::Clinical,
        IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
    )
    .with_patient(Pseudonym::parse(PATIENT).unwrap())
    .with_client_cert(cert())
}

#[derive(serde::Deserialize)]
struct Claims {
    grant: String,
    ops: Vec<String>,
    stores: Vec<String>,
    patient: String,
    exp: u64,
    cert: String,
    net: String,
}

fn bench(c: &mut Criterion) {
    let mut raw = [7u8; 32];
    let root = Key32::from_bytes(&mut raw);
    let mut m = Macaroon::mint(&root, b"grant-0001", "https://cleave.example").unwrap();
    for p in predicates() {
        m.add_first_party_predicate(&p).unwrap();
    }
    let token = m.serialize();
    let prepared = RootKey::new(&root);
    let context = ctx();
    assert!(Macaroon::parse(&token).unwrap().verify(&prepared, &[], &context).is_ok());

    let mut g = c.benchmark_group("decision_6_caveats");
    g.bench_function("cleave_tokens", |b| {
        b.iter(|| {
            let m = Macaroon::parse(black_box(&token)).unwrap();
            black_box(m.verify(&prepared, &[], &context).is_ok())
        })
    });
    // The broker's path for a token it has seen before (VerifiedTokens): the chain is not
    // recomputed, every caveat is still checked against the request.
    let cache = cleave_tokens::VerifiedTokens::new(1024);
    assert!(cache.verify(&token, &[], &prepared, &context).is_ok());
    g.bench_function("cleave_tokens_verified_cache_hit", |b| {
        b.iter(|| {
            let v = cache.get(black_box(&token), &[]).unwrap();
            black_box(v.authorize(&context).is_ok())
        })
    });
    g.bench_function("cleave_tokens_cold_root_key", |b| {
        b.iter(|| {
            let m = Macaroon::parse(black_box(&token)).unwrap();
            black_box(m.verify(&RootKey::new(&root), &[], &context).is_ok())
        })
    });

    // The macaroon crate: its cheapest path (every caveat satisfied exactly).
    macaroon::initialize().unwrap();
    let derived = macaroon::MacaroonKey::generate(&[7u8; 32]);
    let mut verifier = macaroon::Verifier::default();
    for p in predicates() {
        verifier.satisfy_exact(macaroon::ByteString::from(p.as_str()));
    }
    assert!(verifier.verify(&macaroon::Macaroon::deserialize(&token).unwrap(), &derived, vec![]).is_ok());
    g.bench_function("macaroon_crate_verifier", |b| {
        b.iter(|| {
            let m = macaroon::Macaroon::deserialize(black_box(&token)).unwrap();
            black_box(verifier.verify(&m, &derived, vec![]).is_ok())
        })
    });

    // Ed25519 JWT with the same claims, checked the same way.
    let sk = SigningKey::from_bytes(&[5u8; 32]);
    let vk: VerifyingKey = sk.verifying_key();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(
        serde_json::json!({"grant": "grant-0001", "ops": ["read", "write"], "stores": ["clinical"],
            "patient": PATIENT, "exp": 1_893_456_000u64, "cert": CERT_HEX, "net": "10.0.0.0/8"})
        .to_string(),
    );
    let signing_input = format!("{header}.{claims}");
    let sig = URL_SAFE_NO_PAD.encode(sk.sign(signing_input.as_bytes()).to_bytes());
    let jwt = format!("{signing_input}.{sig}");
    let jwt_decide = |jwt: &str| -> bool {
        let Some((input, sig)) = jwt.rsplit_once('.') else { return false };
        let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else { return false };
        let Ok(sig) = Signature::from_slice(&sig) else { return false };
        if vk.verify(input.as_bytes(), &sig).is_err() {
            return false;
        }
        let Some((_, claims)) = input.split_once('.') else { return false };
        let Ok(json) = URL_SAFE_NO_PAD.decode(claims) else { return false };
        let Ok(cl) = serde_json::from_slice::<Claims>(&json) else { return false };
        let now = context.now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(u64::MAX);
        let net: cleave_tokens::IpNet = match cl.net.parse() {
            Ok(n) => n,
            Err(_) => return false,
        };
        cl.grant == "grant-0001"
            && cl.ops.iter().any(|o| o == "read")
            && cl.stores.iter().any(|s| s == "clinical")
            && Some(cl.patient.as_str()) == context.patient.as_ref().map(|p| p.as_str())
            && now < cl.exp
            && cl.cert == CERT_HEX
            && net.contains(&context.peer_ip)
    };
    assert!(jwt_decide(&jwt));
    g.bench_function("ed25519_jwt", |b| b.iter(|| black_box(jwt_decide(black_box(&jwt)))));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
