// The admin pages: sign-in, the gallery (newest first, 24 a page, label filter, next page), delete, sign-out.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { launch, newPage, apiUpload, apiGet, adminLogin, screenshot, PHONE, url } from './helpers.mjs';

let browser;
before(async () => {
  browser = await launch();
});
after(async () => {
  await browser?.close();
});

const PAGE_SIZE = 24;

test('admin sign-in refuses a wrong key and the gallery needs a session', async () => {
  const { context, page, problems } = await newPage(browser);
  const response = await page.goto('/admin/images');
  assert.match(page.url(), /\/admin\/login$/, 'redirected to sign-in');
  assert.equal(response.status(), 200);

  await page.fill('#api_key', 'not-the-right-key-at-all');
  const [refused] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/admin/login') && r.request().method() === 'POST'),
    page.click('button[type=submit]'),
  ]);
  assert.equal(refused.status(), 401);
  const alert = await page.textContent('[role=alert]');
  assert.match(alert, /UNAUTHORIZED|not right/);
  const cookies = await context.cookies();
  assert.ok(cookies.every((c) => c.value !== 'not-the-right-key-at-all'));

  await adminLogin(page);
  const session = (await context.cookies()).filter((c) => c.httpOnly);
  assert.ok(session.length >= 1, 'an HttpOnly session cookie');
  assert.ok(session.every((c) => c.sameSite === 'Strict'), JSON.stringify(session));
  assert.equal(await page.evaluate(() => document.cookie.includes('browser-test-admin-key')), false);

  await Promise.all([page.waitForURL(/\/admin\/login$/), page.click('.logout-form button')]);
  await page.goto('/admin/images');
  assert.match(page.url(), /\/admin\/login$/, 'signed out');
  assert.deepEqual(problems, []);
  await context.close();
});

test('the gallery pages through uploads newest first, filters by label, and deletes', async () => {
  // 26 small uploads (more than a page), then a few photos so the first page is worth a look.
  const logos = [];
  for (let i = 0; i < PAGE_SIZE + 2; i += 1) logos.push(await apiUpload('logo-alpha.png', { filename: `logo-${i}.png` }));
  const photos = [];
  for (const name of ['rocket.gif', 'coffee.png', 'astronaut.webp', 'cat-gps-rotated.jpg', 'cat.jpg']) photos.push(await apiUpload(name));
  const newest = photos[photos.length - 1];

  const { context, page, problems } = await newPage(browser);
  await adminLogin(page);
  const ids = async () => page.$$eval('.gallery-item .gallery-link', (as) => as.map((a) => a.getAttribute('href').split('/').pop()));
  const first = await ids();
  assert.equal(first.length, PAGE_SIZE);
  assert.deepEqual(first.slice(0, photos.length), photos.map((p) => p.id).reverse(), 'newest first');
  assert.ok((await page.textContent('.gallery-item:first-child .gallery-label')).includes(newest.predictions[0].label));
  assert.ok((await page.$$('.gallery-item time')).length === PAGE_SIZE);

  await screenshot(page, 'gallery-desktop.png');
  await page.setViewportSize(PHONE);
  await screenshot(page, 'gallery-phone.png');
  await page.setViewportSize({ width: 1280, height: 900 });

  // Next page: no overlap, and further back in time.
  const next = await page.getAttribute('a[rel=next]', 'href');
  assert.match(next, /^\/admin\/images\?cursor=/);
  await page.click('a[rel=next]');
  await page.waitForURL(/cursor=/);
  const second = await ids();
  assert.ok(second.length >= 1);
  assert.ok(second.every((id) => !first.includes(id)), 'pages do not overlap');
  const everything = [...first, ...second];
  assert.ok(logos.slice(-(PAGE_SIZE - photos.length)).every((l) => everything.includes(l.id)));

  // Label filter, kept by the next-page link.
  const label = logos[0].predictions[0].label;
  await page.goto('/admin/images');
  await page.fill('#label-filter', label);
  await Promise.all([page.waitForURL(/label=/), page.click('.filter-form button[type=submit]')]);
  assert.equal(await page.inputValue('#label-filter'), label);
  const filtered = await page.$$eval('.gallery-label', (ps) => ps.map((p) => p.textContent));
  assert.ok(filtered.length >= 1);
  assert.ok(filtered.every((t) => t.includes(label)), filtered.join(' | '));
  assert.ok(!(await ids()).includes(newest.id), 'the cat is not in the filtered list');
  const filteredNext = await page.getAttribute('a[rel=next]', 'href');
  if (filteredNext) assert.equal(new URL(filteredNext, url('/')).searchParams.get('label'), label);

  // Delete the newest from the gallery.
  await page.goto('/admin/images');
  const item = page.locator('.gallery-item', { has: page.locator(`a[href="/images/${newest.id}"]`) });
  await Promise.all([page.waitForURL(/\/admin\/images/), item.locator('.delete-form button').click()]);
  await page.waitForLoadState();
  assert.ok(!(await ids()).includes(newest.id));
  assert.equal((await apiGet(newest.id)).status, 404);
  assert.equal(new URL(page.url()).origin, new URL(url('/')).origin);
  assert.deepEqual(problems, []);
  await context.close();
});

test('a lost image heads the gallery until its record is deleted', async () => {
  const lost = await apiUpload('cat.jpg', { filename: 'holiday.jpg' });
  // Gone from the store behind Upshot's back; the consistency check finds it and marks it.
  await rm(path.join(process.env.UPSHOT_TEST_DATA_DIR, 'objects', 'images', lost.id, 'original.jpg'));
  const run = spawnSync(process.env.UPSHOT_BIN, ['reconcile', '--repair'], {
    env: { ...process.env, UPSHOT_DATA_DIR: process.env.UPSHOT_TEST_DATA_DIR, UPSHOT_LOG: 'warn' },
    encoding: 'utf8',
    timeout: 60000,
  });
  assert.equal(run.status, 3, run.stderr);
  assert.equal((await apiGet(lost.id)).status, 410);

  const { context, page, problems } = await newPage(browser);
  await adminLogin(page);
  const alert = page.locator('.lost-images');
  assert.match(await alert.locator('h2').textContent(), /^1 lost image$/);
  assert.ok((await alert.textContent()).includes('holiday.jpg'));
  assert.ok((await alert.textContent()).includes(lost.id));
  await screenshot(page, 'gallery-lost-image.png');
  await Promise.all([page.waitForURL(/\/admin\/images$/), alert.locator('.delete-form button').click()]);
  assert.equal(await page.locator('.lost-images').count(), 0, 'the record is deleted');
  assert.equal((await apiGet(lost.id)).status, 404);
  assert.deepEqual(problems, []);
  await context.close();
});
