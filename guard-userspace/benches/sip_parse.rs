//! SIP messages parsed per second on one core, over a corpus of realistic
//! messages (`sip_corpus.txt`, messages separated by `%%` lines).
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use guard_userspace::sip::parser;

/// The corpus with CRLF line ends, as on the wire.
pub fn corpus() -> Vec<Vec<u8>> {
    include_str!("sip_corpus.txt")
        .split("%%\n")
        .map(|message| message.replace('\n', "\r\n").into_bytes())
        .collect()
}

fn parse_corpus(c: &mut Criterion) {
    let messages = corpus();
    let mut group = c.benchmark_group("sip_parse");
    group.throughput(Throughput::Elements(messages.len() as u64));
    group.bench_function("corpus", |b| {
        b.iter(|| {
            for message in &messages {
                let parsed = parser::parse(black_box(message), true);
                assert!(parsed.is_ok());
                black_box(parsed.ok());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, parse_corpus);
criterion_main!(benches);
