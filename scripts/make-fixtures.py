#!/usr/bin/env python3
# Regenerates the image fixtures in tests/fixtures/ (see tests/fixtures/README.md).
#
# Pinned deps (tested with Python 3.11):
#   scikit-image==0.26.0 Pillow==12.1.1   (numpy 2.4.6 came with them)
#
#   python3 -m venv /tmp/fxvenv
#   /tmp/fxvenv/bin/pip install scikit-image==0.26.0 Pillow==12.1.1
#   /tmp/fxvenv/bin/python scripts/make-fixtures.py [OUT_DIR]
#
# OUT_DIR defaults to tests/fixtures next to this script's parent directory.
# The sample photos ship inside the scikit-image wheel; nothing is downloaded.
# Output is byte-for-byte reproducible with the pinned versions.
import io
import os
import struct
import sys
import zlib

from PIL import ExifTags, Image, ImageOps, PngImagePlugin
from skimage import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures")

# Strings a test can grep for in stored bytes to prove metadata was stripped.
SECRET_XMP = "UpshotSecretXmp"
SECRET_COM = "UpshotSecretComment"
SECRET_TEXT = "UpshotSecretText"

MAX_SIZE = 150 * 1024


def path(name):
    return os.path.join(OUT, name)


def write(name, blob):
    with open(path(name), "wb") as f:
        f.write(blob)


def dms(value):
    """Decimal degrees -> (deg, min, sec) as floats; Pillow stores them as RATIONALs."""
    deg = int(value)
    minutes_f = (value - deg) * 60
    minutes = int(minutes_f)
    seconds = round((minutes_f - minutes) * 60, 2)
    return (float(deg), float(minutes), seconds)


def make_exif(orientation=None):
    """EXIF with Make/Model, DateTimeOriginal and GPS 48.8584 N, 2.2945 E (Eiffel Tower)."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "UpshotTestCam"
    exif[ExifTags.Base.Model] = "UpshotTestCam"
    exif[ExifTags.Base.DateTime] = "2024:05:01 12:34:56"
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[ExifTags.Base.DateTimeOriginal] = "2024:05:01 12:34:56"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSVersionID] = b"\x02\x02\x00\x00"
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = dms(48.8584)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = dms(2.2945)
    return exif.tobytes()


def jpeg_segment(marker, payload):
    assert len(payload) + 2 <= 0xFFFF
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def splice_after_app_segments(jpeg, segments):
    """Insert raw segments after SOI and every leading APPn (JFIF APP0, Exif APP1)."""
    assert jpeg[:2] == b"\xff\xd8"
    pos = 2
    while jpeg[pos] == 0xFF and 0xE0 <= jpeg[pos + 1] <= 0xEF:
        (length,) = struct.unpack(">H", jpeg[pos + 2 : pos + 4])
        pos += 2 + length
    return jpeg[:pos] + b"".join(segments) + jpeg[pos:]


def jpeg_markers(jpeg):
    """List of (marker, payload) up to SOS."""
    out = []
    pos = 2
    while pos < len(jpeg):
        assert jpeg[pos] == 0xFF, pos
        marker = jpeg[pos + 1]
        (length,) = struct.unpack(">H", jpeg[pos + 2 : pos + 4])
        out.append((marker, jpeg[pos + 4 : pos + 2 + length]))
        if marker == 0xDA:
            break
        pos += 2 + length
    return out


def png_chunks(blob):
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    pos = 8
    out = []
    while pos < len(blob):
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        ctype = blob[pos + 4 : pos + 8]
        out.append((ctype, blob[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def png_chunk(ctype, payload):
    crc = zlib.crc32(ctype + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", crc)


def raw_png(width, height, bit_depth, rows, level=9):
    """Grayscale PNG from raw scanlines (bytes, without filter byte), via struct/zlib only."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    comp = zlib.compressobj(level)
    idat = bytearray()
    for row in rows:
        idat += comp.compress(b"\x00" + row)
    idat += comp.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", bytes(idat))
        + png_chunk(b"IEND", b"")
    )


XMP_PACKET = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
    ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
    '  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">\n'
    "   <dc:description><rdf:Alt><rdf:li xml:lang=\"x-default\">"
    + SECRET_XMP
    + "</rdf:li></rdf:Alt></dc:description>\n"
    "  </rdf:Description>\n"
    " </rdf:RDF>\n"
    "</x:xmpmeta>\n"
    '<?xpacket end="w"?>'
).encode("utf-8")


def main():
    os.makedirs(OUT, exist_ok=True)

    chelsea = Image.fromarray(data.chelsea())  # 451x300 (w x h)
    assert chelsea.size == (451, 300)

    # --- cat.jpg: plain JFIF, no EXIF ---------------------------------------
    buf = io.BytesIO()
    chelsea.save(buf, "JPEG", quality=90, progressive=False, optimize=False)
    cat = buf.getvalue()
    write("cat.jpg", cat)
    markers = [m for m, _ in jpeg_markers(cat)]
    assert 0xE0 in markers and 0xE1 not in markers and b"Exif\x00\x00" not in cat
    assert 0xC0 in markers  # SOF0 = baseline

    # --- cat-gps-rotated.jpg: EXIF (GPS, orientation 6) + XMP + COM ---------
    buf = io.BytesIO()
    chelsea.save(buf, "JPEG", quality=90, progressive=False, exif=make_exif(orientation=6))
    rotated = splice_after_app_segments(
        buf.getvalue(),
        [
            jpeg_segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + XMP_PACKET),
            jpeg_segment(0xFE, SECRET_COM.encode("ascii") + b": test comment segment"),
        ],
    )
    write("cat-gps-rotated.jpg", rotated)
    with Image.open(path("cat-gps-rotated.jpg")) as im:
        im.load()
        assert im.size == (451, 300), im.size
        exif = im.getexif()
        assert exif[ExifTags.Base.Orientation] == 6
        assert exif[ExifTags.Base.Make] == "UpshotTestCam"
        assert exif[ExifTags.Base.Model] == "UpshotTestCam"
        assert exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] == "2024:05:01 12:34:56"
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        assert gps[ExifTags.GPS.GPSLatitudeRef] == "N" and gps[ExifTags.GPS.GPSLongitudeRef] == "E"
        lat = gps[ExifTags.GPS.GPSLatitude]
        assert abs(float(lat[0]) + float(lat[1]) / 60 + float(lat[2]) / 3600 - 48.8584) < 1e-4
        assert SECRET_XMP in im.info.get("xmp", b"").decode()
        assert SECRET_COM.encode() in im.info.get("comment", b"")
        assert ImageOps.exif_transpose(im).size == (300, 451)
    for needle in (b"Exif\x00\x00", SECRET_XMP.encode(), SECRET_COM.encode()):
        assert needle in rotated

    # --- coffee.png: 320 wide RGB, tEXt Comment + eXIf with GPS -------------
    coffee = Image.fromarray(data.coffee())  # 600x400
    coffee = coffee.resize((320, round(400 * 320 / 600)), Image.LANCZOS)
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", SECRET_TEXT)
    coffee.save(path("coffee.png"), "PNG", pnginfo=info, exif=make_exif(), optimize=True)
    with open(path("coffee.png"), "rb") as f:
        chunks = dict(png_chunks(f.read()))
    assert chunks[b"tEXt"] == b"Comment\x00" + SECRET_TEXT.encode()
    assert b"eXIf" in chunks
    with Image.open(path("coffee.png")) as im:
        assert im.mode == "RGB" and im.size == (320, 213)
        assert im.getexif().get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitudeRef] == "N"

    # --- astronaut.webp: 256x256 lossy q80 with EXIF incl. GPS --------------
    astro = Image.fromarray(data.astronaut()).resize((256, 256), Image.LANCZOS)
    astro.save(path("astronaut.webp"), "WEBP", quality=80, lossless=False, method=4, exif=make_exif())
    with Image.open(path("astronaut.webp")) as im:
        assert im.size == (256, 256)
        assert im.getexif().get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLongitudeRef] == "E"

    # --- rocket.gif: ~200 wide, 2 frames (second inverted) -------------------
    rocket = Image.fromarray(data.rocket())  # 640x427
    rocket = rocket.resize((200, round(427 * 200 / 640)), Image.LANCZOS)
    frames = [rocket, ImageOps.invert(rocket)]
    frames = [f.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE) for f in frames]
    frames[0].save(
        path("rocket.gif"), "GIF", save_all=True, append_images=frames[1:], duration=500, loop=0, optimize=False
    )
    with Image.open(path("rocket.gif")) as im:
        assert im.n_frames == 2 and im.size == (200, 133) and im.is_animated

    # --- logo-alpha.png: 64x64 RGBA with transparency -------------------------
    logo = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    px = logo.load()
    for y in range(64):
        for x in range(64):
            d2 = (x - 31.5) ** 2 + (y - 31.5) ** 2
            if d2 <= 28**2:
                alpha = 255 if d2 <= 20**2 else 128
                px[x, y] = (230, 80 + 2 * y, 40 + 3 * x, alpha)
    logo.save(path("logo-alpha.png"), "PNG")
    with Image.open(path("logo-alpha.png")) as im:
        assert im.mode == "RGBA" and im.getextrema()[3] == (0, 255)

    # --- not-an-image.jpg ----------------------------------------------------
    write(
        "not-an-image.jpg",
        b"This is not a JPEG.\n"
        b"It is a plain text file with a .jpg name, used to check that the\n"
        b"upload handler sniffs content instead of trusting the extension.\n",
    )

    # --- truncated.jpg: first 40% of cat.jpg ---------------------------------
    write("truncated.jpg", cat[: len(cat) * 40 // 100])

    # --- bomb.png: 12000x12000 1-bit gray, all zeros ------------------------
    bomb = raw_png(12000, 12000, 1, (bytes(12000 // 8) for _ in range(12000)))
    write("bomb.png", bomb)
    # Validate by decompressing (not decoding via Pillow: that is the point).
    idat = dict(png_chunks(bomb))[b"IDAT"]
    assert len(zlib.decompress(idat)) == 12000 * (1 + 12000 // 8)

    # --- tall.png: 1x20000 8-bit gray ---------------------------------------
    tall = raw_png(1, 20000, 8, (bytes([(y * 7) & 0xFF]) for y in range(20000)))
    write("tall.png", tall)
    with Image.open(path("tall.png")) as im:
        im.load()
        assert im.size == (1, 20000) and im.mode == "L"

    for name in sorted(os.listdir(OUT)):
        size = os.path.getsize(path(name))
        print(f"{size:8d}  {name}")
        assert size <= MAX_SIZE or name.endswith(".md"), f"{name} too big: {size}"


if __name__ == "__main__":
    main()
