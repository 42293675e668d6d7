// The result page: the image with its face boxes, predictions chart, selfie analysis, metadata, copyable link;
// user text rendered as text.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { launch, newPage, apiUpload, fixture, screenshot, DESKTOP, PHONE, url } from './helpers.mjs';

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

test('the selfie result page shows one face box over the image and a colour season', async () => {
  const image = await apiUpload('astronaut.webp', { description: 'Eileen Collins, NASA portrait' });
  assert.equal(image.faces.length, 1, JSON.stringify(image.faces));
  assert.ok(image.selfie, `a selfie analysis (reason: ${image.selfie_reason})`);

  const { context, page, problems } = await newPage(browser);
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: url('/') });
  await page.goto(image.urls.page);
  const boxes = await page.$$('.face-overlay .face-box');
  assert.equal(boxes.length, 1);
  assert.equal(await page.getAttribute('.face-overlay', 'viewBox'), `0 0 ${image.width} ${image.height}`);

  // The box is drawn where the face is: inside the picture, at the bbox's fractions of it (the bounding box
  // includes the 3px stroke, hence the tolerance on the size).
  const img = await page.locator('.main-image').boundingBox();
  const box = await boxes[0].boundingBox();
  const [x0, y0, x1, y1] = image.faces[0].bbox;
  const near = (a, b, tolerance) => Math.abs(a - b) <= tolerance;
  const expected = { x: img.x + x0 * img.width, y: img.y + y0 * img.height, width: (x1 - x0) * img.width, height: (y1 - y0) * img.height };
  const detail = `${JSON.stringify(box)} vs ${JSON.stringify(expected)}`;
  assert.ok(near(box.x + box.width / 2, expected.x + expected.width / 2, 1.5), detail);
  assert.ok(near(box.y + box.height / 2, expected.y + expected.height / 2, 1.5), detail);
  assert.ok(near(box.width, expected.width, 4) && near(box.height, expected.height, 4), detail);
  assert.ok(box.x >= img.x - 2 && box.x + box.width <= img.x + img.width + 2, 'inside the picture');

  assert.equal((await page.textContent('#season-name')).trim(), image.selfie.season);
  assert.match(await page.textContent('.season-confidence'), new RegExp(`^${Math.round(image.selfie.confidence * 100)}% confidence$`));
  assert.equal((await page.$$('.palette rect')).length, 5);
  assert.match(await page.textContent('main'), /Body type: not estimated/);
  assert.equal((await page.$$('.prediction')).length, image.predictions.length);
  assert.match(await page.getAttribute('.hash', 'title'), new RegExp(`^${image.sha256}$`));
  assert.match(await page.textContent('main'), new RegExp(image.model.name));
  assert.match(await page.getAttribute('.thumbnail', 'src'), /\/thumbnail$/);
  // The main image is shown upright at its stored size ratio.
  const natural = await page.$eval('.main-image', (el) => [el.naturalWidth, el.naturalHeight]);
  assert.deepEqual(natural, [image.width, image.height]);

  await screenshot(page, 'result-selfie-desktop.png');
  await page.setViewportSize(PHONE);
  await screenshot(page, 'result-selfie-phone.png');
  await page.setViewportSize(DESKTOP);

  // Copyable link.
  assert.equal(await page.inputValue('#page-link'), url(`/images/${image.id}`));
  await page.click('#copy-link');
  await page.waitForFunction(() => document.getElementById('copy-status').textContent.length > 0);
  assert.match(await page.textContent('#copy-status'), /copied/i);
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), url(`/images/${image.id}`));
  // Not the uploader's browser (the API client kept the token): no delete button.
  assert.ok(await page.isHidden('#owner-delete'));

  assert.deepEqual(problems, []);
  await context.close();
});

test('a photo without a face says why there is no selfie analysis', async () => {
  const image = await apiUpload('coffee.png');
  const { context, page, problems } = await newPage(browser);
  await page.goto(image.urls.page);
  assert.equal((await page.$$('.face-box')).length, 0);
  assert.equal(await page.$('#season-name'), null);
  if (image.selfie_reason) assert.match(await page.textContent('main'), new RegExp(image.selfie_reason.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  assert.deepEqual(problems, []);
  await context.close();
});

test('a hostile filename and description are shown as text, never run', async () => {
  const hostile = '<script>alert(1)</script>';
  const { context, page, problems } = await newPage(browser);
  await page.goto('/');
  await page.setInputFiles('#file', { name: `${hostile}.jpg`, mimeType: 'image/jpeg', buffer: await fixture('cat.jpg') });
  await page.fill('#description', `${hostile} & friends`);
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/api/v1/images')),
    page.click('#upload-button'),
  ]);
  const image = await response.json();
  await page.waitForSelector('#result:not([hidden])');
  const onlyOurs = async () => page.$$eval('script', (nodes) => nodes.map((n) => n.getAttribute('src')));
  let scripts = await onlyOurs();
  assert.equal(scripts.length, 1);
  assert.match(scripts[0], /^\/static\/app\.js\?v=/);
  if (image.original_filename) assert.ok((await page.textContent('#result .result-name')).includes(image.original_filename));
  assert.equal(await page.getAttribute('#result .result-thumb', 'alt'), `${hostile} & friends`);

  await page.goto(image.urls.page);
  scripts = await onlyOurs();
  assert.equal(scripts.length, 1);
  assert.ok(await page.isVisible(`.description >> text=${hostile} & friends`));
  if (image.original_filename) assert.equal((await page.textContent('#image-heading')).trim(), image.original_filename);
  assert.equal(await page.getAttribute('.main-image', 'alt'), `${hostile} & friends`);
  assert.deepEqual(problems, [], 'no alert dialog, no errors');
  await context.close();
});

// The mean difference, 0..255, between two images drawn at the same small size: the stored photo as the
// browser shows it, and the thumbnail the service made from the upright pixels.
async function shownLike(page, a, b) {
  return page.evaluate(async ([a, b]) => {
    const load = (src) => new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = reject;
      img.src = src;
    });
    const pixels = (img, turned) => {
      const canvas = Object.assign(document.createElement('canvas'), { width: 24, height: 36 });
      const ctx = canvas.getContext('2d');
      if (turned) {
        ctx.translate(24, 36);
        ctx.rotate(Math.PI);
      }
      ctx.drawImage(img, 0, 0, 24, 36);
      return ctx.getImageData(0, 0, 24, 36).data;
    };
    const [first, second] = await Promise.all([load(a), load(b)]);
    const difference = (x, y) => x.reduce((sum, v, i) => sum + Math.abs(v - y[i]), 0) / x.length;
    return {
      natural: [first.naturalWidth, first.naturalHeight],
      same: difference(pixels(first, false), pixels(second, false)),
      turned: difference(pixels(first, true), pixels(second, false)),
    };
  }, [a, b]);
}

test('a phone photo stored sideways shows upright, on its page and at its file URL', async () => {
  // 451x300 as stored, EXIF orientation 6: upright it is 300 wide and 451 high.
  const image = await apiUpload('cat-gps-rotated.jpg');
  assert.deepEqual([image.width, image.height], [300, 451]);
  const { context, page, problems } = await newPage(browser);
  await page.goto(image.urls.page);
  const natural = await page.$eval('.main-image', (el) => [el.naturalWidth, el.naturalHeight]);
  assert.deepEqual(natural, [300, 451], 'the page shows the photo upright');
  const shown = await page.locator('.main-image').boundingBox();
  assert.ok(shown.height > shown.width, JSON.stringify(shown));
  // Upright, not merely portrait: the photo as shown looks like its thumbnail, and unlike it turned over.
  const compared = await shownLike(page, image.urls.file, image.urls.thumbnail);
  assert.deepEqual(compared.natural, [300, 451]);
  assert.ok(compared.same < 12 && compared.turned > 2 * compared.same, JSON.stringify(compared));
  await screenshot(page, 'result-phone-photo.png');
  assert.deepEqual(problems, []);

  // Opened on its own, the file shows upright too. (The file's own CSP, default-src 'none', refuses the
  // inline styles of Chromium's image viewer, as it should: those reports are not the page's.)
  await page.goto(url(image.urls.file));
  const alone = await page.$eval('img', (el) => [el.naturalWidth, el.naturalHeight]);
  assert.deepEqual(alone, [300, 451], 'the file URL shows the photo upright');
  await context.close();
});

test('an iPhone HEIC photo, which Chromium cannot show, is shown upright from its display rendition', async () => {
  // Stored 451x300 and turned by its container (irot): upright it is 300 wide and 451 high.
  const image = await apiUpload('cat-gps.heic', { filename: 'IMG_0001.HEIC' });
  assert.equal(image.content_type, 'image/heic');
  assert.deepEqual([image.width, image.height], [300, 451]);
  const { context, page, problems } = await newPage(browser);
  await page.goto(image.urls.page);
  const natural = await page.$eval('.main-image', (el) => [el.complete, el.naturalWidth, el.naturalHeight]);
  assert.deepEqual(natural, [true, 300, 451], 'the page shows a picture, upright');
  // The rendition is the photo: drawn small, it looks like the thumbnail, not like it turned over.
  const compared = await shownLike(page, image.urls.display, image.urls.thumbnail);
  assert.ok(compared.same < 12 && compared.turned > 2 * compared.same, JSON.stringify(compared));
  // Chromium itself cannot decode the original: without the rendition, the page would show nothing.
  const original = await page.evaluate((src) => new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve('decoded');
    img.onerror = () => resolve('not decoded');
    img.src = src;
  }), image.urls.file);
  assert.equal(original, 'not decoded');
  await screenshot(page, 'result-heic-photo.png');
  assert.deepEqual(problems, []);
  await context.close();
});

test('while a photo loads, its page paints its ThumbHash placeholder in its place', async () => {
  const image = await apiUpload('cat.jpg');
  assert.ok(image.thumbhash, JSON.stringify(image));
  const { context, page, problems } = await newPage(browser);
  // The photo arrives slowly, as on a phone network.
  let release;
  const arrived = new Promise((resolve) => { release = resolve; });
  await page.route(`**${image.urls.display}`, async (route) => {
    await arrived;
    await route.continue();
  });
  await page.goto(image.urls.page, { waitUntil: 'domcontentloaded' });
  const waiting = await page.$eval('.main-image', (el) => [
    el.complete && el.naturalWidth > 0,
    getComputedStyle(el).backgroundImage,
  ]);
  assert.equal(waiting[0], false, 'the photo has not arrived');
  assert.match(waiting[1], /^url\("data:image\/png;base64,/, 'the placeholder is painted meanwhile');
  release();
  await page.waitForFunction(() => {
    const img = document.querySelector('.main-image');
    return img.complete && img.naturalWidth > 0 && getComputedStyle(img).backgroundImage === 'none';
  });
  assert.deepEqual(problems, []);
  await context.close();
});
