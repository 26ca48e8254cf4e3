//! Bounded, streaming decompression of `.ko.xz`, `.ko.zst` and `.ko.gz`.
//!
//! A few KiB of xz can expand to GiBs, so output is read through a
//! `take(limit + 1)`: the decoder never produces more than one byte past the
//! limit, and that byte turns into an error. Decoder memory is capped too (xz
//! memlimit, zstd window size), since both formats let the header ask for
//! large buffers.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use super::{Compression, ImageError};

/// Smallest decoder memory allowed whatever `max_decompressed` is: real
/// modules are compressed with dictionaries of 1–2 MiB (xz) and windows up to
/// 8 MiB (zstd -19), which must stay readable under small test limits.
const MIN_DECODER_MEMORY: u64 = 16 << 20;

/// Decompress `input` as `format`, failing past `limit` output bytes.
pub fn decompress(format: Compression, input: &[u8], limit: u64) -> Result<Vec<u8>, ImageError> {
    let consumed = Rc::new(Cell::new(0u64));
    let source = CountingReader {
        inner: input,
        consumed: Rc::clone(&consumed),
    };
    let decoder_memory = limit.max(MIN_DECODER_MEMORY);
    let corrupt = |detail: String, output_len: u64| ImageError::Decompress {
        format,
        input_offset: consumed.get(),
        output_len,
        detail,
    };
    let decoder: Box<dyn Read> = match format {
        Compression::Xz => xz_decoder(source, decoder_memory).map_err(|e| corrupt(e, 0))?,
        Compression::Zstd => zstd_decoder(source, decoder_memory).map_err(|e| corrupt(e, 0))?,
        // gzip's window is 32 KiB by design: nothing to cap.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(source)),
    };
    let mut out = Vec::new();
    let read = decoder.take(limit.saturating_add(1)).read_to_end(&mut out);
    if let Err(e) = read {
        return Err(corrupt(e.to_string(), out.len() as u64));
    }
    if out.len() as u64 > limit {
        return Err(ImageError::DecompressedTooLarge {
            format,
            input_offset: consumed.get(),
            limit,
        });
    }
    Ok(out)
}

/// xz decoder reading concatenated streams, as kmod does, with a memory
/// limit so a header asking for a 1.5 GiB dictionary fails instead.
fn xz_decoder<'a>(source: CountingReader<'a>, memlimit: u64) -> Result<Box<dyn Read + 'a>, String> {
    let stream =
        liblzma::stream::Stream::new_stream_decoder(memlimit, liblzma::stream::CONCATENATED)
            .map_err(|e| format!("cannot start decoder: {e}"))?;
    Ok(Box::new(liblzma::read::XzDecoder::new_stream(
        source, stream,
    )))
}

/// zstd decoder whose window (the buffer a frame header asks for) is at most
/// `memory` bytes, within zstd's own bounds of 2^10..2^31.
fn zstd_decoder<'a>(source: CountingReader<'a>, memory: u64) -> Result<Box<dyn Read + 'a>, String> {
    let mut decoder = zstd::stream::read::Decoder::new(source)
        .map_err(|e| format!("cannot start decoder: {e}"))?;
    let window_log = (u64::BITS - memory.leading_zeros())
        .saturating_sub(1)
        .clamp(10, 31);
    decoder
        .window_log_max(window_log)
        .map_err(|e| format!("cannot set window_log_max {window_log}: {e}"))?;
    Ok(Box::new(decoder))
}

/// Counts the compressed bytes handed to the decoder, to say where in the
/// input a corrupt stream was noticed.
struct CountingReader<'a> {
    inner: &'a [u8],
    consumed: Rc<Cell<u64>>,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}
