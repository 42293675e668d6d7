// The upload page: file picker, drag and drop, progress and cancel, errors, and the no-JavaScript form.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import {
  launch, newPage, fixture, fixturePath, apiGet, screenshot, throttleUpload, DESKTOP, PHONE, url,
} from './helpers.mjs';

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

test('file picker upload shows the progress bar, then the predictions without a reload', async () => {
  const { context, page, problems } = await newPage(browser);
  await page.goto('/');
  // The server's limits and formats are on the page, as text.
  const hint = await page.textContent('#file-hint');
  assert.match(hint, /JPEG, PNG, WebP, GIF/);
  assert.match(hint, /24 MiB/, 'with JavaScript, the direct upload limit');
  assert.ok(await page.isVisible('text=Drag and drop an image here'), 'the drop zone is announced with JS on');

  await page.setInputFiles('#file', fixturePath('cat.jpg'));
  await page.waitForSelector('#preview-image');
  assert.match(await page.getAttribute('#preview-image', 'src'), /^blob:/);
  await page.fill('#description', 'Chelsea on the sofa');
  await screenshot(page, 'upload-desktop.png');
  await page.setViewportSize(PHONE);
  await screenshot(page, 'upload-phone.png');
  await page.setViewportSize(DESKTOP);

  await throttleUpload(page, 20 * 1024); // ~35 KB: close to two seconds of visible progress
  const navigations = [];
  page.on('framenavigated', (frame) => frame === page.mainFrame() && navigations.push(frame.url()));
  await page.click('#upload-button');
  await page.waitForSelector('#progress:not([hidden])');
  await page.waitForFunction(() => document.getElementById('progress-bar').value > 0);
  assert.ok(await page.isVisible('#cancel-upload'));

  await page.waitForSelector('#result:not([hidden])', { timeout: 30000 });
  assert.deepEqual(navigations, [], 'no full reload');
  assert.ok(await page.isHidden('#progress'));
  const labels = await page.$$eval('#result .prediction-label', (nodes) => nodes.map((n) => n.textContent));
  assert.ok(labels.includes('Egyptian cat'), labels.join(', '));
  const widths = await page.$$eval('#result .bar-fill', (nodes) => nodes.map((n) => Number(n.getAttribute('width'))));
  assert.ok(widths[0] > 0 && widths[0] <= 100);
  assert.match(await page.textContent('#upload-status'), /Upload complete/);

  const href = await page.getAttribute('#result-link', 'href');
  const id = href.split('/').pop();
  const token = await page.evaluate((key) => localStorage.getItem(key), `upshot:delete:${id}`);
  assert.ok(token && token.length > 10, 'the delete token is kept in localStorage');

  // The result page offers deletion to this browser (the token is in its storage) …
  await page.click('#result-link');
  await page.waitForURL(`**/images/${id}`);
  await page.waitForSelector('#owner-delete:not([hidden])');
  assert.ok(await page.isVisible('text=Egyptian cat'));
  // … but not to another browser.
  const other = await newPage(browser);
  await other.page.goto(`/images/${id}`);
  assert.ok(await other.page.isHidden('#owner-delete'));
  assert.equal(await other.page.$('#delete-token'), null, 'nobody else sees a token');
  assert.ok(!(await other.page.content()).includes(token));
  await other.context.close();

  await Promise.all([page.waitForURL(/\/\?deleted=true$/), page.click('#owner-delete')]);
  assert.match(await page.textContent('main'), /The image was deleted/);
  assert.equal((await apiGet(id)).status, 404);
  assert.equal(await page.evaluate((key) => localStorage.getItem(key), `upshot:delete:${id}`), null);
  assert.deepEqual(problems, []);
  await context.close();
});

test('an upload can be cancelled while it is sent', async () => {
  const { context, page, problems } = await newPage(browser);
  await page.goto('/');
  await page.setInputFiles('#file', fixturePath('coffee.png'));
  await throttleUpload(page, 8 * 1024); // 129 KB: about 16 s, cancelled long before
  await page.click('#upload-button');
  await page.waitForSelector('#progress:not([hidden])');
  await page.click('#cancel-upload');
  await page.waitForSelector('#progress', { state: 'hidden' });
  assert.match(await page.textContent('#upload-status'), /cancelled/i);
  assert.ok(await page.isHidden('#result'));
  assert.ok(await page.isEnabled('#upload-button'));
  assert.deepEqual(problems, []);
  await context.close();
});

test('drag and drop of a photo onto the drop zone uploads it', async () => {
  const { context, page, problems } = await newPage(browser);
  await page.goto('/');
  const bytes = (await fixture('rocket.gif')).toString('base64');
  await page.evaluate((b64) => {
    const data = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([data], 'rocket.gif', { type: 'image/gif' }));
    const zone = document.getElementById('dropzone');
    for (const type of ['dragenter', 'dragover', 'drop']) {
      zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true, dataTransfer: transfer }));
    }
  }, bytes);
  await page.waitForSelector('#result:not([hidden])', { timeout: 30000 });
  assert.match(await page.textContent('#preview-caption'), /rocket\.gif/);
  assert.ok((await page.$$('#result .prediction')).length >= 1);
  assert.match(await page.textContent('#result .result-name'), /rocket\.gif/);
  assert.deepEqual(problems, []);
  await context.close();
});

test('drag and drop of a fetched fixture (built in the page) works too', async () => {
  const { context, page, problems } = await newPage(browser);
  await page.goto('/');
  // Route a same-origin address to the fixture's bytes, so the page fetches them itself.
  await page.route('**/__fixtures__/cat.jpg', async (route) =>
    route.fulfill({ status: 200, contentType: 'image/jpeg', body: await fixture('cat.jpg') }));
  await page.evaluate(async () => {
    const blob = await (await fetch('/__fixtures__/cat.jpg')).blob();
    const transfer = new DataTransfer();
    transfer.items.add(new File([blob], 'cat.jpg', { type: blob.type }));
    document.getElementById('dropzone').dispatchEvent(new DragEvent('drop', { bubbles: true, cancelable: true, dataTransfer: transfer }));
  });
  await page.waitForSelector('#result:not([hidden])', { timeout: 30000 });
  const labels = await page.$$eval('#result .prediction-label', (nodes) => nodes.map((n) => n.textContent));
  assert.ok(labels.includes('Egyptian cat'), labels.join(', '));
  assert.deepEqual(problems, []);
  await context.close();
});

test('a file that is not an image gets the friendly error with UNSUPPORTED_MEDIA_TYPE', async () => {
  const { context, page, problems } = await newPage(browser);
  await page.goto('/');
  await page.setInputFiles('#file', fixturePath('not-an-image.jpg'));
  await page.click('#upload-button');
  const alert = await page.waitForSelector('#upload-error[role=alert]:not([hidden])');
  const text = await alert.textContent();
  assert.match(text, /not an image we accept/);
  assert.match(text, /UNSUPPORTED_MEDIA_TYPE/);
  assert.match(text, /Request id/);
  assert.ok(await page.isHidden('#result'));
  assert.deepEqual(problems, []);
  await context.close();
});

test('a file over the size limit is refused before it is sent', async () => {
  const { context, page, problems } = await newPage(browser);
  await page.goto('/');
  const max = Number(await page.getAttribute('#upload-form', 'data-direct-max-bytes'));
  assert.ok(max > Number(await page.getAttribute('#upload-form', 'data-max-bytes')));
  let sent = false;
  page.on('request', (request) => {
    if (request.url().includes('/api/v1/')) sent = true;
  });
  await page.setInputFiles('#file', { name: 'huge.jpg', mimeType: 'image/jpeg', buffer: Buffer.alloc(max + 1) });
  await page.click('#upload-button');
  const text = await (await page.waitForSelector('#upload-error:not([hidden])')).textContent();
  assert.match(text, /PAYLOAD_TOO_LARGE/);
  assert.match(text, /too big/);
  assert.equal(sent, false);
  assert.deepEqual(problems, []);
  await context.close();
});

/** A PNG of noise, stored without compression: about 3 bytes a pixel, so its size is chosen exactly. */
function noisePng(width, height) {
  const chunk = (type, data) => {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(zlib.crc32(body));
    return Buffer.concat([length, body, crc]);
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 2, 0, 0, 0], 8); // 8-bit RGB
  const rows = Buffer.alloc((width * 3 + 1) * height);
  let state = 0x9e3779b9;
  for (let i = 0; i < rows.length; i += 1) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    rows[i] = state & 0xff;
  }
  for (let y = 0; y < height; y += 1) rows[y * (width * 3 + 1)] = 0; // filter: none
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([signature, chunk('IHDR', header), chunk('IDAT', zlib.deflateSync(rows, { level: 0 })), chunk('IEND', Buffer.alloc(0))]);
}

test('a file over the form limit goes straight to the store by a direct upload session', async () => {
  const { context, page, problems } = await newPage(browser);
  await page.goto('/');
  const formMax = Number(await page.getAttribute('#upload-form', 'data-max-bytes'));
  const png = noisePng(2700, 2700);
  assert.ok(png.length > formMax, `${png.length} is over the form's ${formMax}`);
  const requests = [];
  page.on('request', (request) => requests.push(`${request.method()} ${new URL(request.url()).pathname}`));
  await page.setInputFiles('#file', { name: 'panorama.png', mimeType: 'image/png', buffer: png });
  await page.fill('#description', 'Sent directly');
  await throttleUpload(page, 8 * 1024 * 1024);
  await page.click('#upload-button');
  await page.waitForSelector('#progress:not([hidden])');
  await page.waitForSelector('#result:not([hidden])', { timeout: 120000 });
  assert.ok(requests.includes('POST /api/v1/uploads'), requests.join(', '));
  assert.ok(requests.some((r) => /^PUT \/api\/v1\/uploads\/[0-9a-f]{32}\/data$/.test(r)), requests.join(', '));
  assert.ok(requests.some((r) => /^POST \/api\/v1\/uploads\/[0-9a-f]{32}\/complete$/.test(r)), requests.join(', '));
  assert.ok(!requests.includes('POST /api/v1/images'), 'not through the form');
  assert.match(await page.textContent('#upload-status'), /Upload complete/);
  const link = await page.getAttribute('#result-link', 'href');
  const image = await (await apiGet(link.split('/').pop())).json();
  assert.equal(image.original_filename, 'panorama.png');
  assert.equal(image.description, 'Sent directly');
  assert.equal(image.width, 2700);
  assert.deepEqual(problems, []);
  await context.close();
});

test('a direct upload that another worker is completing still ends on its result', async () => {
  const { context, page, problems } = await newPage(browser);
  // The page's first completion arrives while someone else (in production, the bucket's event) holds the
  // session: the server does the work for that other caller, and the page is told 409 UPLOAD_IN_PROGRESS, as
  // it would be. The page must then follow the session's status and show the stored image.
  let raced = 0;
  await page.route(/\/api\/v1\/uploads\/[0-9a-f]{32}\/complete$/, async (route) => {
    if (raced > 0) return route.continue();
    raced += 1;
    const other = await route.fetch();
    assert.equal(other.status(), 201, 'the other worker stored it');
    return route.fulfill({
      status: 409,
      contentType: 'application/json',
      body: JSON.stringify({ error: { code: 'UPLOAD_IN_PROGRESS', message: 'This upload is being processed.', request_id: 'raced' } }),
    });
  });
  const requests = [];
  page.on('request', (request) => requests.push(`${request.method()} ${new URL(request.url()).pathname}`));
  await page.goto('/');
  // Over the form's limit, so the page takes the direct path.
  await page.setInputFiles('#file', { name: 'raced.png', mimeType: 'image/png', buffer: noisePng(2700, 2700) });
  await page.click('#upload-button');
  await page.waitForSelector('#result:not([hidden])', { timeout: 120000 });
  assert.equal(raced, 1);
  assert.ok(requests.some((r) => /^GET \/api\/v1\/uploads\/[0-9a-f]{32}$/.test(r)), `the page asked the status: ${requests.join(', ')}`);
  assert.equal(requests.filter((r) => r.endsWith('/complete')).length, 2, requests.join(', '));
  assert.match(await page.textContent('#upload-status'), /Upload complete/);
  assert.ok(await page.isHidden('#upload-error'), 'no error shown for an upload that was stored');
  assert.deepEqual(problems.filter((p) => !/409/.test(p)), []);
  await context.close();
});

test('without JavaScript the form posts to /upload and lands on the result page with the one-time token', async () => {
  const { context, page } = await newPage(browser, { javaScriptEnabled: false });
  await page.goto('/');
  assert.ok(await page.isHidden('text=Drag and drop an image here'), 'no promise of drag and drop without JS');
  await page.setInputFiles('#file', fixturePath('cat.jpg'));
  await page.fill('#description', 'Sent without JavaScript');
  await Promise.all([page.waitForURL(/\/images\/[0-9a-f]+$/), page.click('#upload-button')]);
  assert.match(await page.textContent('.alert-success'), /Upload complete/);
  const labels = await page.$$eval('.prediction-label', (nodes) => nodes.map((n) => n.textContent));
  assert.ok(labels.includes('Egyptian cat'), labels.join(', '));
  const token = (await page.textContent('#delete-token')).trim();
  assert.ok(token.length > 10);

  // Shown once: a reload no longer has it.
  const pageUrl = page.url();
  await page.reload();
  assert.equal(await page.$('#delete-token'), null);
  assert.ok(!(await page.content()).includes(token));

  // The no-JS error path re-renders the form with the code.
  await page.goto('/');
  await page.setInputFiles('#file', fixturePath('not-an-image.jpg'));
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/upload')),
    page.click('#upload-button'),
  ]);
  assert.equal(response.status(), 415);
  assert.match(await page.textContent('[role=alert]'), /UNSUPPORTED_MEDIA_TYPE/);

  // And the no-JS delete, with the token the uploader was shown.
  const second = await newPage(browser, { javaScriptEnabled: false });
  await second.page.goto('/');
  await second.page.setInputFiles('#file', fixturePath('logo-alpha.png'));
  await Promise.all([second.page.waitForURL(/\/images\//), second.page.click('#upload-button')]);
  const id = second.page.url().split('/').pop();
  await Promise.all([second.page.waitForURL(/\/\?deleted=true$/), second.page.click('#nojs-delete-form button')]);
  assert.match(await second.page.textContent('main'), /The image was deleted/);
  assert.equal((await apiGet(id)).status, 404);
  assert.ok(pageUrl.startsWith(url('/images/')));
  await second.context.close();
  await context.close();
});
