//! preinit: a function whose state takes real work to build, for
//! deploy-time pre-initialisation (`preinitialize = true`).
//!
//! The state: the primes below 2,000,000 (a sieve) and a greeting read from
//! `$GREETING` (`[env]`). `wizer-initialize` builds it; without
//! pre-initialisation the first request of each instance builds it instead.
//! Every request answers the same body either way:
//!
//! `GREETING primes=N sum=S last=P request=R`
//!
//! where `R` counts the requests this instance has served (1 in a fresh
//! instance: nothing leaks between them). The header `x-initialised` says
//! where the state was built: `deploy` (it came with the snapshot) or
//! `request`. With `$SPIN_INIT=1` the initialisation never ends (to see the
//! deploy's timeout stop it); with `$TRAP_INIT=1` it writes to stderr and
//! traps.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use wasip2::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

mod init {
    wit_bindgen::generate!({
        inline: "package updraft:preinit; world init { export wizer-initialize: func(); }",
        world: "init",
    });
}

wasip2::http::proxy::export!(Preinit);
init::export!(Preinit with_types_in init);

struct Preinit;

/// Primes are counted below this.
const LIMIT: usize = 2_000_000;

struct State {
    greeting: String,
    primes: Vec<u32>,
}

static STATE: OnceLock<State> = OnceLock::new();
/// Whether `wizer-initialize` built the state (so it came with the snapshot).
static BUILT_AT_INIT: AtomicU64 = AtomicU64::new(0);
/// Requests this instance has served.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

fn env(name: &str) -> Option<String> {
    wasip2::cli::environment::get_environment()
        .into_iter()
        .find_map(|(k, v)| (k == name).then_some(v))
}

fn build() -> State {
    let mut composite = vec![false; LIMIT];
    let mut primes = Vec::new();
    for n in 2..LIMIT {
        if !composite[n] {
            primes.push(n as u32);
            // usize is 32 bits here: n * n overflows past 65,535.
            let mut multiple = n.checked_mul(n).unwrap_or(LIMIT);
            while multiple < LIMIT {
                composite[multiple] = true;
                multiple += n;
            }
        }
    }
    State {
        greeting: env("GREETING").unwrap_or_else(|| "hello".to_string()),
        primes,
    }
}

impl init::Guest for Preinit {
    fn wizer_initialize() {
        if env("TRAP_INIT").as_deref() == Some("1") {
            eprintln!("preinit: failing on purpose");
            std::process::abort();
        }
        if env("SPIN_INIT").as_deref() == Some("1") {
            let mut n = 0u64;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        STATE.get_or_init(build);
        BUILT_AT_INIT.store(1, Ordering::Relaxed);
    }
}

impl wasip2::exports::http::incoming_handler::Guest for Preinit {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let request = REQUESTS.fetch_add(1, Ordering::Relaxed) + 1;
        let state = STATE.get_or_init(build);
        let sum: u64 = state.primes.iter().map(|&p| u64::from(p)).sum();
        let body = format!(
            "{} primes={} sum={sum} last={} request={request}\n",
            state.greeting,
            state.primes.len(),
            state.primes.last().copied().unwrap_or(0),
        );
        let built = match BUILT_AT_INIT.load(Ordering::Relaxed) {
            1 => "deploy",
            _ => "request",
        };
        let headers = Fields::new();
        let _ = headers.set("content-type", &[b"text/plain".to_vec()]);
        let _ = headers.set("x-initialised", &[built.as_bytes().to_vec()]);
        let response = OutgoingResponse::new(headers);
        let Ok(out) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(stream) = out.write() {
            let _ = stream.blocking_write_and_flush(body.as_bytes());
        }
        let _ = OutgoingBody::finish(out, None);
    }
}
