//! Per-request framing cost: request-head parsing and rewriting, response-head
//! parsing and rewriting, and chunked decoding, on realistic inputs.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use percore::http1::chunked::write_chunk_size;
use percore::http1::rewrite::{self, ClientBody, ForwardFields};
use percore::http1::{ChunkedDecoder, Version, header_slots, request, response};

const WRK_REQUEST: &[u8] = b"GET /16 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";
const BROWSER_REQUEST: &[u8] = b"GET /api/items?page=2&sort=desc HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\nAccept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\nCookie: session=4f9c2b7e1a; theme=dark\r\nUpgrade-Insecure-Requests: 1\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n";
const NGINX_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 26 Nov 2026 12:00:00 GMT\r\nContent-Type: application/octet-stream\r\nContent-Length: 16\r\nLast-Modified: Thu, 26 Nov 2026 11:00:00 GMT\r\nConnection: keep-alive\r\nETag: \"6745a1b0-10\"\r\nAccept-Ranges: bytes\r\n\r\n0123456789abcdef";

fn request_heads(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_head");
    for (name, raw) in [("wrk", WRK_REQUEST), ("browser", BROWSER_REQUEST)] {
        group.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| {
                let mut headers = header_slots();
                let head = request::parse(black_box(raw), &mut headers)
                    .expect("valid")
                    .expect("complete");
                black_box(head.head_len)
            })
        });
        let mut out = Vec::with_capacity(4096);
        group.bench_function(format!("parse+rewrite/{name}"), |b| {
            b.iter(|| {
                let mut headers = header_slots();
                let head = request::parse(black_box(raw), &mut headers)
                    .expect("valid")
                    .expect("complete");
                out.clear();
                let fields = ForwardFields {
                    client_ip: b"127.0.0.1",
                    request_id: b"6a3f09c1-0-1f",
                    backend_authority: b"127.0.0.1:9001",
                };
                rewrite::write_request_head(&mut out, &head, &fields);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn response_heads(c: &mut Criterion) {
    let mut group = c.benchmark_group("response_head");
    group.bench_function("parse/nginx", |b| {
        b.iter(|| {
            let mut headers = header_slots();
            let head = response::parse(black_box(NGINX_RESPONSE), &mut headers, false)
                .expect("valid")
                .expect("complete");
            black_box(head.head_len)
        })
    });
    let mut out = Vec::with_capacity(4096);
    group.bench_function("parse+rewrite/nginx", |b| {
        b.iter(|| {
            let mut headers = header_slots();
            let head = response::parse(black_box(NGINX_RESPONSE), &mut headers, false)
                .expect("valid")
                .expect("complete");
            out.clear();
            rewrite::write_response_head(
                &mut out,
                &head,
                b"6a3f09c1-0-1f",
                ClientBody::Length(16),
                Version::Http11,
                false,
            );
            black_box(out.len())
        })
    });
    group.finish();
}

fn chunked(c: &mut Criterion) {
    let mut body = Vec::new();
    for _ in 0..64 {
        write_chunk_size(&mut body, 1000);
        body.extend_from_slice(&[b'x'; 1000]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut group = c.benchmark_group("chunked");
    group.throughput(Throughput::Bytes(64_000));
    group.bench_function("decode/64x1000", |b| {
        b.iter(|| {
            let mut decoder = ChunkedDecoder::new();
            let mut offset = 0;
            let mut payload = 0;
            while !decoder.is_done() {
                let step = decoder.step(black_box(&body[offset..])).expect("valid");
                payload += step.data.len();
                offset += step.consumed;
            }
            black_box(payload)
        })
    });
    group.finish();
}

criterion_group!(benches, request_heads, response_heads, chunked);
criterion_main!(benches);
