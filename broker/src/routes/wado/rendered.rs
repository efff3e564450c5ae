//! WADO-RS rendered resources (PS3.18 8.3.5.1 and 8.7.4): one frame of an instance as a
//! consumer image, `image/jpeg`, for thumbnails and previews in viewers and portals.
//!
//! What is rendered: native (uncompressed, little endian) pixel data that are grayscale
//! (MONOCHROME1 or MONOCHROME2, 8 or 16 bits allocated, signed or not), through the
//! Modality LUT (Rescale Slope and Intercept) and a linear VOI window (PS3.3 C.11.2.1.2),
//! or 8-bit RGB. Anything else (compressed transfer syntaxes, YBR, palette colour, float
//! pixels) is 406 with a pointer to the frames resource: this server neither decodes nor
//! transcodes bitstreams.
//!
//! The window is the request's `window=center,width,linear` (PS3.18 8.3.5.1.3), else the
//! first Window Center and Width of the stored header, else the frame's own range.
//! `quality` (1 to 100, default 90) is the JPEG quality. Other PS3.18 rendering parameters
//! (viewport, annotation, charset) and unknown keys are refused with 400, not ignored.
//! Nothing is drawn on the image: it shows the de-identified object's pixels only.
use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use cleave_deid::Limits;
use serde_json::Value;

use super::{access, accept_ranges, ClinicalReader, Target};
use crate::server::ConnInfo;
use crate::state::AppState;
use crate::Error;

const R_RENDERED: &str = "/dicomweb/studies/{study}/series/{series}/instances/{instance}/rendered";
const R_FRAME_RENDERED: &str = "/dicomweb/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered";
/// The largest frame rendered, in pixels (4096 x 4096, more than a mammogram): the frame
/// (up to 32 MiB at 16 bits) and its 8-bit image are held in memory while the JPEG is
/// encoded, so this bounds what one request can make the broker hold.
const MAX_PIXELS: u64 = 16 << 20;

/// `GET .../instances/{instance}/rendered`: the first frame.
pub async fn rendered_instance(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path((study, series, instance)): Path<(String, String, String)>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    h: HeaderMap,
) -> Result<Response, Error> {
    let t = Target::new(study, Some(series), Some(instance), true)?;
    render(s, c, h, R_RENDERED, t, 1, q).await
}

/// `GET .../instances/{instance}/frames/{frame}/rendered`: one frame.
pub async fn rendered_frame(
    State(s): State<AppState>,
    Extension(c): Extension<ConnInfo>,
    Path((study, series, instance, frames)): Path<(String, String, String, String)>,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
    h: HeaderMap,
) -> Result<Response, Error> {
    let t = Target::new(study, Some(series), Some(instance), true)?;
    let frame = frames
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| Error::bad_request("a rendered frame is one frame number from 1 (several frames cannot be one JPEG)"))?;
    render(s, c, h, R_FRAME_RENDERED, t, frame, q).await
}

/// The request's rendering parameters.
struct Params {
    window: Option<(f64, f64)>,
    quality: u8,
}

fn params(q: Result<Query<HashMap<String, String>>, QueryRejection>) -> Result<Params, Error> {
    let q = q.map(|Query(q)| q).map_err(|_| Error::bad_request("malformed query string"))?;
    let mut p = Params { window: None, quality: 90 };
    for (k, v) in &q {
        match k.as_str() {
            "window" => {
                let parts: Vec<&str> = v.split(',').map(str::trim).collect();
                let bad = || Error::bad_request("window is center,width,linear (the width at least 1)");
                let [center, width, function] = parts[..] else { return Err(bad()) };
                if !function.eq_ignore_ascii_case("linear") {
                    return Err(Error::bad_request("only the linear window function is rendered"));
                }
                let (center, width) = (center.parse::<f64>().map_err(|_| bad())?, width.parse::<f64>().map_err(|_| bad())?);
                if !center.is_finite() || !width.is_finite() || width < 1.0 {
                    return Err(bad());
                }
                p.window = Some((center, width));
            }
            "quality" => {
                p.quality = v.parse::<u8>().ok().filter(|q| (1..=100).contains(q)).ok_or_else(|| Error::bad_request("quality is 1 to 100"))?;
            }
            other => {
                return Err(Error::bad_request(format!(
                    "rendering parameter {:?} is not supported (window and quality are)",
                    other.chars().filter(|c| c.is_ascii_alphanumeric()).take(32).collect::<String>()
                )))
            }
        }
    }
    Ok(p)
}

fn jpeg_acceptable(h: &HeaderMap) -> bool {
    accept_ranges(h).iter().any(|r| matches!(r.essence.as_str(), "*/*" | "image/*" | "image/jpeg"))
}

async fn render(
    s: AppState,
    c: ConnInfo,
    h: HeaderMap,
    route: &'static str,
    t: Target,
    frame: u32,
    q: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, Error> {
    let p = params(q)?;
    // Pixels only: nothing to re-identify.
    let a = access(&s, &c, &h, route, t, false).await?;
    let Some(inst) = a.resolved.instances.first().cloned() else { return Err(Error::not_found("instance")) };
    if frame > inst.frames.unwrap_or(1).max(1) {
        return Err(Error::bad_request("the frame number is beyond the instance's NumberOfFrames"));
    }
    if !matches!(inst.transfer_syntax.as_str(), "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1") {
        return Err(Error::NotAcceptable(
            "only uncompressed little-endian pixel data are rendered; retrieve the frames in their own transfer syntax".into(),
        ));
    }
    if !jpeg_acceptable(&h) {
        return Err(Error::NotAcceptable("rendered frames are sent as image/jpeg only".into()));
    }
    a.record(&s)?;
    let reader = ClinicalReader::new(&s, &a.caller);
    let limits: Limits = s.pipeline.limits.clone();
    let jpeg = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, Error> {
        let meta = cleave_deid::metadata_json(reader.open_instance(&inst.sop_instance_uid)?, None, &limits, None)
            .map_err(|e| Error::Store(format!("reading a stored instance: {e}")))?;
        let layout = Layout::of(&meta)?;
        let mut bytes = Vec::with_capacity(layout.frame_bytes());
        cleave_deid::copy_frame(reader.open_instance(&inst.sop_instance_uid)?, frame, &mut bytes, &limits)
            .map_err(|e| Error::Store(format!("reading a stored frame: {e}")))?;
        let (pixels, color) = layout.eight_bit(&bytes, p.window)?;
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, p.quality)
            .encode(&pixels, layout.columns, layout.rows, color)
            .map_err(|e| Error::Store(format!("encoding the rendered frame: {e}")))?;
        Ok(out)
    })
    .await
    .map_err(|_| Error::Store("a rendering task was interrupted".into()))??;
    let mut resp = Response::new(axum::body::Body::from(jpeg));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    Ok(resp)
}

/// What the stored header says about the pixel data, as far as rendering needs it.
#[derive(Debug, PartialEq)]
struct Layout {
    rows: u16,
    columns: u16,
    samples: u16,
    bits_allocated: u16,
    bits_stored: u16,
    signed: bool,
    monochrome1: bool,
    planar: bool,
    slope: f64,
    intercept: f64,
    window: Option<(f64, f64)>,
}

fn not_rendered(why: &str) -> Error {
    Error::NotAcceptable(format!("this instance is not rendered ({why}); retrieve its frames instead"))
}

/// The first value of attribute `tag` in DICOM JSON, as a number (DS and IS values may be
/// JSON numbers or strings).
fn number(meta: &Value, tag: &str) -> Option<f64> {
    match meta.get(tag)?.get("Value")?.get(0)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text<'a>(meta: &'a Value, tag: &str) -> Option<&'a str> {
    meta.get(tag)?.get("Value")?.get(0)?.as_str().map(str::trim)
}

impl Layout {
    fn of(meta: &Value) -> Result<Layout, Error> {
        let us = |tag: &str| number(meta, tag).filter(|v| v.fract() == 0.0 && (0.0..=65535.0).contains(v)).map(|v| v as u16);
        let (Some(rows), Some(columns)) = (us("00280010").filter(|v| *v > 0), us("00280011").filter(|v| *v > 0)) else {
            return Err(not_rendered("no Rows or Columns"));
        };
        let samples = us("00280002").unwrap_or(1);
        let bits_allocated = us("00280100").ok_or_else(|| not_rendered("no Bits Allocated"))?;
        let bits_stored = us("00280101").unwrap_or(bits_allocated);
        let photometric = text(meta, "00280004").unwrap_or("");
        let l = Layout {
            rows,
            columns,
            samples,
            bits_allocated,
            bits_stored,
            signed: us("00280103") == Some(1),
            monochrome1: photometric == "MONOCHROME1",
            planar: us("00280006") == Some(1),
            slope: number(meta, "00281053").filter(|v| v.is_finite() && *v != 0.0).unwrap_or(1.0),
            intercept: number(meta, "00281052").filter(|v| v.is_finite()).unwrap_or(0.0),
            window: number(meta, "00281050").zip(number(meta, "00281051")).filter(|(c, w)| c.is_finite() && w.is_finite() && *w >= 1.0),
        };
        match (samples, photometric, bits_allocated) {
            (1, "MONOCHROME1" | "MONOCHROME2", 8 | 16) if (1..=bits_allocated).contains(&bits_stored) => {}
            (3, "RGB", 8) => {}
            _ => return Err(not_rendered("only MONOCHROME1/2 of 8 or 16 bits and 8-bit RGB are")),
        }
        if u64::from(rows) * u64::from(columns) > MAX_PIXELS {
            return Err(not_rendered("the frame is too large"));
        }
        Ok(l)
    }

    fn frame_bytes(&self) -> usize {
        usize::from(self.rows) * usize::from(self.columns) * usize::from(self.samples) * usize::from(self.bits_allocated / 8)
    }

    /// The frame as 8-bit pixels for the JPEG encoder.
    fn eight_bit(&self, frame: &[u8], window: Option<(f64, f64)>) -> Result<(Vec<u8>, jpeg_encoder::ColorType), Error> {
        if frame.len() < self.frame_bytes() {
            return Err(Error::Store("a stored frame is shorter than its header says".into()));
        }
        let n = usize::from(self.rows) * usize::from(self.columns);
        if self.samples == 3 {
            let rgb = if self.planar {
                (0..n).flat_map(|i| [frame[i], frame[n + i], frame[2 * n + i]]).collect()
            } else {
                frame[..3 * n].to_vec()
            };
            return Ok((rgb, jpeg_encoder::ColorType::Rgb));
        }
        // Stored values, masked to Bits Stored and sign-extended, then the Modality LUT.
        let bits = u32::from(self.bits_stored);
        let raw = |i: usize| -> i64 {
            let v = if self.bits_allocated == 8 { u64::from(frame[i]) } else { u64::from(u16::from_le_bytes([frame[2 * i], frame[2 * i + 1]])) };
            let v = v & ((1u64 << bits) - 1);
            if self.signed && v >> (bits - 1) & 1 == 1 { v as i64 - (1i64 << bits) } else { v as i64 }
        };
        // Computed twice rather than held: a Vec of f64 would be eight times the image.
        let value = |i: usize| raw(i) as f64 * self.slope + self.intercept;
        let (center, width) = match window.or(self.window) {
            Some(w) => w,
            None => {
                let (lo, hi) = (0..n).map(value).fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
                ((lo + hi) / 2.0 + 0.5, (hi - lo + 1.0).max(1.0))
            }
        };
        Ok(((0..n).map(|i| voi(value(i), center, width, self.monochrome1)).collect(), jpeg_encoder::ColorType::Luma))
    }
}

/// PS3.3 C.11.2.1.2.1, linear: a value to 0-255 through the window (inverted for
/// MONOCHROME1, where low values are bright).
fn voi(x: f64, center: f64, width: f64, invert: bool) -> u8 {
    let y = if x <= center - 0.5 - (width - 1.0) / 2.0 {
        0.0
    } else if x > center - 0.5 + (width - 1.0) / 2.0 {
        255.0
    } else {
        ((x - (center - 0.5)) / (width - 1.0).max(1.0) + 0.5) * 255.0
    };
    let y = y.round().clamp(0.0, 255.0) as u8;
    if invert { 255 - y } else { y }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(photometric: &str, bits: u16, signed: u16) -> Value {
        json!({
            "00280002": {"vr": "US", "Value": [1]},
            "00280004": {"vr": "CS", "Value": [photometric]},
            "00280010": {"vr": "US", "Value": [1]},
            "00280011": {"vr": "US", "Value": [4]},
            "00280100": {"vr": "US", "Value": [bits]},
            "00280101": {"vr": "US", "Value": [if bits == 16 { 12 } else { 8 }]},
            "00280103": {"vr": "US", "Value": [signed]},
            "00281052": {"vr": "DS", "Value": ["-1024"]},
            "00281053": {"vr": "DS", "Value": [1]},
            "00281050": {"vr": "DS", "Value": [40]},
            "00281051": {"vr": "DS", "Value": [400]},
        })
    }

    #[test]
    fn the_linear_window_follows_ps3_3() {
        // Center 40, width 400: -160 and below black, 240 and above white.
        assert_eq!(voi(-200.0, 40.0, 400.0, false), 0);
        assert_eq!(voi(-160.0, 40.0, 400.0, false), 0);
        assert_eq!(voi(39.5, 40.0, 400.0, false), 128);
        assert_eq!(voi(240.0, 40.0, 400.0, false), 255);
        assert_eq!(voi(240.0, 40.0, 400.0, true), 0, "MONOCHROME1 inverts");
    }

    #[test]
    fn stored_values_go_through_bits_stored_sign_and_rescale() {
        let l = Layout::of(&meta("MONOCHROME2", 16, 1)).unwrap();
        // 12 bits stored, signed: 0x0FFF is -1; the high bits are not pixel data.
        let frame: Vec<u8> = [1064u16, 0xF000 | 1064, 0x0FFF, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let (px, _) = l.eight_bit(&frame, None).unwrap();
        // 1064 - 1024 = 40 (the center) is mid-grey; -1 - 1024 is below the window.
        assert_eq!(px, vec![128, 128, 0, 0]);
        let (px, _) = l.eight_bit(&frame, Some((1064.0 - 1024.0 + 1000.0, 10.0))).unwrap();
        assert_eq!(px, vec![0, 0, 0, 0], "the request's window wins");
    }

    #[test]
    fn fail_what_cannot_be_rendered_is_not_guessed() {
        let mut m = meta("YBR_FULL_422", 8, 0);
        m["00280002"] = json!({"vr": "US", "Value": [3]});
        assert!(Layout::of(&m).is_err());
        assert!(Layout::of(&meta("PALETTE COLOR", 8, 0)).is_err());
        assert!(Layout::of(&meta("MONOCHROME2", 32, 0)).is_err());
        let mut no_rows = meta("MONOCHROME2", 16, 0);
        no_rows.as_object_mut().unwrap().remove("00280010");
        assert!(Layout::of(&no_rows).is_err());
        let l = Layout::of(&meta("MONOCHROME2", 16, 0)).unwrap();
        assert!(l.eight_bit(&[0u8; 7], None).is_err(), "a short frame");
    }

    #[test]
    fn fail_unknown_or_malformed_parameters_are_refused() {
        let q = |s: &str| {
            let uri: axum::http::Uri = format!("/x?{s}").parse().unwrap();
            params(Query::<HashMap<String, String>>::try_from_uri(&uri))
        };
        assert!(q("window=40,400,linear&quality=50").is_ok());
        for bad in ["viewport=10,10", "annotation=patient", "window=40,400", "window=40,0,linear", "window=40,400,sigmoid", "quality=0", "quality=101"] {
            assert!(q(bad).is_err(), "{bad}");
        }
    }
}
