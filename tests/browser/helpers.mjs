// Shared by the browser tests: the server's address, Debian's Chromium, fixtures, API uploads, page watchers.
import { readFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..', '..');
export const BASE = process.env.UPSHOT_BASE_URL || 'http://127.0.0.1:8000';
export const ADMIN_KEY = process.env.UPSHOT_ADMIN_API_KEY || 'browser-test-admin-key-123';
export const SCREENSHOTS = process.env.UPSHOT_SCREENSHOT_DIR || path.join(ROOT, 'target', 'screenshots');
export const DESKTOP = { width: 1280, height: 900 };
export const PHONE = { width: 390, height: 844 };

export const url = (p) => new URL(p, BASE).toString();
export const fixturePath = (name) => path.join(ROOT, 'tests', 'fixtures', name);
export const fixture = (name) => readFile(fixturePath(name));

/**
 * Debian's Chromium, headless. Playwright's launch() gives every browser a fresh, throwaway user-data-dir of
 * its own (and refuses a --user-data-dir argument), so no profile is shared between runs or test files.
 */
export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
}

export async function newPage(browser, options = {}) {
  const context = await browser.newContext({ viewport: DESKTOP, baseURL: BASE, ...options });
  const page = await context.newPage();
  return { context, page, problems: watch(page) };
}

/**
 * Collects what would show a broken page: uncaught exceptions, CSP reports and console errors.
 * "Failed to load resource" is left out: Chromium logs it for every 4xx answer, and the error tests ask for those.
 */
export function watch(page) {
  const problems = [];
  page.on('pageerror', (error) => problems.push(`pageerror: ${error.message}`));
  page.on('console', (message) => {
    const text = message.text();
    if (/Content Security Policy|Refused to/i.test(text)) problems.push(`csp: ${text}`);
    else if (message.type() === 'error' && !/Failed to load resource/.test(text)) problems.push(`console: ${text}`);
  });
  page.on('dialog', (dialog) => {
    problems.push(`dialog: ${dialog.message()}`);
    dialog.dismiss().catch(() => {});
  });
  return problems;
}

/** Uploads through the JSON API from node (no browser), as an API client would. */
export async function apiUpload(name, { description, filename } = {}) {
  const form = new FormData();
  form.append('file', new Blob([await fixture(name)]), filename || name);
  if (description) form.append('description', description);
  const response = await fetch(url('/api/v1/images'), { method: 'POST', body: form });
  const body = await response.json();
  assert.equal(response.status, 201, JSON.stringify(body));
  return body;
}

export async function apiGet(id) {
  return fetch(url(`/api/v1/images/${id}`));
}

export async function screenshot(page, name) {
  await mkdir(SCREENSHOTS, { recursive: true });
  // Settle fonts and images so the picture is what a person would see.
  await page.evaluate(() => {
    document.activeElement?.blur();
    window.getSelection()?.removeAllRanges();
    return document.fonts.ready;
  });
  await page.waitForFunction(() => [...document.images].every((img) => img.complete));
  await page.screenshot({ path: path.join(SCREENSHOTS, name), fullPage: true, animations: 'disabled' });
}

/** Chromium's DevTools protocol: slow the upload down so the progress bar is seen (and can be cancelled). */
export async function throttleUpload(page, bytesPerSecond) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 20,
    downloadThroughput: -1,
    uploadThroughput: bytesPerSecond,
  });
  return cdp;
}

export async function adminLogin(page) {
  await page.goto('/admin/login');
  await page.fill('#api_key', ADMIN_KEY);
  await Promise.all([page.waitForURL(/\/admin\/images/), page.click('button[type=submit]')]);
}
