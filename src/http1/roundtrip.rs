//! Properties the framing code keeps, whatever the bytes: checked on mutated
//! inputs by the unit test in `http1` (bounded, with `cargo test`) and on
//! coverage-guided inputs by the cargo-fuzz targets in `fuzz/`. Built only
//! for tests and with the `fuzzing` feature.
//!
//! Each check returns `Err` with a description when a property breaks, and
//! otherwise whether the input got as far as the rewriting (most random
//! bytes are refused at the parse, which is fine).

use super::rewrite::{self, ClientBody, ForwardFields};
use super::{
    ChunkedDecoder, MAX_REQUEST_FIELDS, MAX_RESPONSE_FIELDS, RequestHead, ResponseHead, Version,
    has_bare_lf, header_slots, request, response,
};

/// A request the proxy accepts must go upstream as a head that parses,
/// whole and within `MAX_HEADERS` fields, as the same request: the same
/// method, target (in origin-form), framing, authority and WebSocket offer.
/// A difference is a request the backend reads otherwise than percore did.
pub fn check_request(input: &[u8]) -> Result<bool, String> {
    let mut slots = header_slots();
    let Ok(Some(head)) = request::parse(input, &mut slots[..MAX_REQUEST_FIELDS]) else {
        return Ok(false);
    };
    if head.head_len > input.len() {
        return Err(format!("head_len {} past the input", head.head_len));
    }
    let mut out = Vec::new();
    let fields = ForwardFields {
        client_ip: b"192.0.2.1",
        request_id: b"id",
        backend_authority: b"b:1",
    };
    rewrite::write_request_head(&mut out, &head, &fields);
    same_request(&head, &out).map(|()| true)
}

fn same_request(head: &RequestHead, out: &[u8]) -> Result<(), String> {
    let text = || String::from_utf8_lossy(out).into_owned();
    if has_bare_lf(out) {
        return Err(format!("bare LF forwarded: {:?}", text()));
    }
    let mut slots = header_slots();
    let again = match request::parse(out, &mut slots) {
        Ok(Some(again)) => again,
        other => {
            let error = other.err();
            return Err(format!(
                "forwarded head does not parse ({error:?}): {:?}",
                text()
            ));
        }
    };
    let origin_path = if head.absolute_form && !head.path.starts_with('/') {
        format!("/{}", head.path)
    } else {
        head.path.to_string()
    };
    let authority = head.authority.unwrap_or(b"b:1");
    if again.head_len != out.len()
        || again.method != head.method
        || again.path != origin_path
        || again.framing != head.framing
        || again.authority != Some(authority)
        || again.websocket != head.websocket
    {
        return Err(format!("forwarded head reads otherwise: {:?}", text()));
    }
    Ok(())
}

/// A response the proxy accepts must reach the client as a head that
/// parses, whole and within `MAX_HEADERS` fields, with the same status.
pub fn check_response(input: &[u8], request_is_head: bool) -> Result<bool, String> {
    let mut slots = header_slots();
    let slots = &mut slots[..MAX_RESPONSE_FIELDS];
    let Ok(Some(head)) = response::parse(input, slots, request_is_head) else {
        return Ok(false);
    };
    if head.head_len > input.len() {
        return Err(format!("head_len {} past the input", head.head_len));
    }
    let mut out = Vec::new();
    let body = ClientBody::Chunked;
    rewrite::write_response_head(&mut out, &head, b"id", body, Version::Http11, false);
    same_status(&head, &out).map(|()| true)
}

fn same_status(head: &ResponseHead, out: &[u8]) -> Result<(), String> {
    let text = || String::from_utf8_lossy(out).into_owned();
    if has_bare_lf(out) {
        return Err(format!("bare LF relayed: {:?}", text()));
    }
    let mut slots = header_slots();
    match response::parse(out, &mut slots, false) {
        Ok(Some(again)) if again.head_len == out.len() && again.status == head.status => Ok(()),
        Ok(Some(_)) => Err(format!("relayed head reads otherwise: {:?}", text())),
        other => {
            let error = other.err();
            Err(format!(
                "relayed head does not parse ({error:?}): {:?}",
                text()
            ))
        }
    }
}

/// How a chunked body ended for the decoder.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The last chunk and trailers, after this many bytes.
    Done(usize),
    Malformed,
    /// More bytes are needed.
    Incomplete,
}

/// The chunked decoder must read a body the same whether it arrives whole
/// or in pieces (as reads deliver it): the same payload, the same end.
/// `cuts` gives the pieces' lengths, one byte each (1 to 32 bytes). `true`
/// when the body was complete.
pub fn check_chunked(input: &[u8], cuts: &[u8]) -> Result<bool, String> {
    let whole = decode(input, std::iter::once(input.len()))?;
    if cuts.is_empty() {
        return Ok(matches!(whole.1, End::Done(_)));
    }
    let mut end = 0;
    let ends = cuts.iter().cycle().map(move |cut| {
        end += 1 + usize::from(cut % 32);
        end
    });
    let pieces = decode(input, ends)?;
    if whole != pieces {
        return Err(format!(
            "whole {:?}, in pieces {:?}: {:?}",
            whole.1,
            pieces.1,
            String::from_utf8_lossy(input)
        ));
    }
    Ok(matches!(whole.1, End::Done(_)))
}

/// Decodes `input` as bytes arrive up to each of `ends` in turn.
fn decode(input: &[u8], ends: impl Iterator<Item = usize>) -> Result<(Vec<u8>, End), String> {
    let mut decoder = ChunkedDecoder::new();
    let mut payload = Vec::new();
    let mut at = 0;
    for end in ends {
        let end = end.min(input.len());
        while at < end {
            let step = match decoder.step(&input[at..end]) {
                Ok(step) => step,
                Err(_) => return Ok((payload, End::Malformed)),
            };
            if step.consumed > end - at || step.data.end > step.consumed {
                return Err(format!("step {step:?} past its {} bytes", end - at));
            }
            payload.extend_from_slice(&input[at..][step.data]);
            at += step.consumed;
            if step.done {
                return Ok((payload, End::Done(at)));
            }
            if step.consumed == 0 {
                return Err(format!("no progress at byte {at}"));
            }
        }
        if end == input.len() {
            break;
        }
    }
    Ok((payload, End::Incomplete))
}
