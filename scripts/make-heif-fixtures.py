#!/usr/bin/env python3
# Makes the HEIC and AVIF fixtures in tests/fixtures/ (see tests/fixtures/README.md) as phones' and converters'
# files are made: HEIC with libheif and x265, AVIF with libavif (Pillow's, and Debian's avifenc for 10 bits),
# from the pixels and EXIF of the fixtures make-fixtures.py writes.
#
# Pinned deps (tested with Python 3.11): pillow-heif==1.8.1 (libheif 1.23.6, x265 4.3) Pillow==12.1.1 (libavif
# 1.3.0), and Debian bookworm's libavif-bin 0.11.1 (avifenc):
#
#   python3 -m venv /tmp/fxvenv
#   /tmp/fxvenv/bin/pip install pillow-heif==1.8.1 Pillow==12.1.1
#   apt-get install libavif-bin
#   /tmp/fxvenv/bin/python scripts/make-heif-fixtures.py [OUT_DIR]
import os
import subprocess
import sys
import tempfile

import pillow_heif
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures")
SECRET_XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description>UpshotSecretXmp'
    b"</dc:description></rdf:Description></rdf:RDF></x:xmpmeta>"
)

source = Image.open(os.path.join(ROOT, "tests", "fixtures", "cat-gps-rotated.jpg"))
exif = source.getexif()
# The pixels as the JPEG stores them (sideways); libheif turns its EXIF orientation (6) into the container's
# rotation (irot), as iPhones store theirs, so that the photo shows upright, 300x451.
sideways = pillow_heif.from_bytes(mode="RGB", size=source.size, data=source.convert("RGB").tobytes())
sideways.save(os.path.join(OUT, "cat-gps.heic"), quality=80, exif=exif.tobytes(), xmp=SECRET_XMP)

# AVIF, 8 bits 4:2:0, by Pillow: the same pixels, EXIF and XMP; libavif writes orientation 6 as irot.
source.save(os.path.join(OUT, "cat-gps.avif"), quality=80, exif=exif.tobytes(), xmp=SECRET_XMP)
# With an alpha plane (an auxiliary image).
Image.open(os.path.join(ROOT, "tests", "fixtures", "logo-alpha.png")).save(os.path.join(OUT, "logo-alpha.avif"), quality=90)
# 10 bits, 4:4:4, by avifenc.
subprocess.run(
    ["avifenc", "--jobs", "1", "--depth", "10", "--yuv", "444", "--speed", "6",
     os.path.join(ROOT, "tests", "fixtures", "coffee.png"), os.path.join(OUT, "coffee-10bit.avif")],
    check=True, stdout=subprocess.DEVNULL,
)
# A grid of 2x2 tiles, as large AVIFs are stored: coffee.png cut to an even height, split by avifenc.
with tempfile.TemporaryDirectory() as scratch:
    even = os.path.join(scratch, "coffee-even.png")
    Image.open(os.path.join(ROOT, "tests", "fixtures", "coffee.png")).crop((0, 0, 320, 212)).save(even)
    subprocess.run(
        ["avifenc", "--jobs", "1", "--grid", "2x2", "--speed", "6", even, os.path.join(OUT, "coffee-grid.avif")],
        check=True, stdout=subprocess.DEVNULL,
    )
