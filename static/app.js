// Upshot's pages, made nicer with JavaScript. Everything here is an enhancement: every page works without it.
// Loaded as a module from /static (the Content-Security-Policy allows no inline script). User-supplied text is
// only ever put into the page with textContent or attribute setters, never as HTML.

const SVG_NS = 'http://www.w3.org/2000/svg';
const TOKEN_PREFIX = 'upshot:delete:';
/** A direct upload another worker is processing: its status is asked this often, for at most this long. */
const DIRECT_POLL_MS = 1500;
const DIRECT_WAIT_MS = 10 * 60 * 1000;

/** Friendly words per stable error code; the code itself is always shown too. */
const FRIENDLY = {
  MISSING_FILE: ['No image was chosen', 'Please choose an image file, then press Upload.'],
  PAYLOAD_TOO_LARGE: ['That file is too big', 'Please choose an image of at most {max}.'],
  UNSUPPORTED_MEDIA_TYPE: [
    'That file is not an image we accept',
    'Upshot checks what a file contains, not its name. Please choose a {formats} image.',
  ],
  IMAGE_TOO_LARGE: ['That image has too many pixels', 'Please choose a smaller image, or scale it down first.'],
  CORRUPT_IMAGE: [
    'That image looks damaged',
    'The file could not be read as a complete image. It may be truncated; please try another copy.',
  ],
  INVALID_REQUEST: ['Something in the form was not accepted', 'Please check the description and try again.'],
  BUSY: ['The server is busy', 'Too many images are being processed right now. Please try again in a few seconds.'],
  INFERENCE_BUSY: [
    'The server is busy',
    'Too many images are being analysed right now. Please try again in a few seconds.',
  ],
  UPLOAD_EXPIRED: ['The upload took too long', 'Its link expired before the file arrived. Please upload it again.'],
  UPLOAD_URL_INVALID: ['The upload was refused', 'The file changed while it was being sent. Please upload it again.'],
  NETWORK_ERROR: ['The connection was lost', 'The upload could not reach the server. Check your connection and try again.'],
  NOT_FOUND: ['Not found', 'The image no longer exists.'],
  FORBIDDEN: ['Not allowed', 'The delete token was not accepted.'],
  UNAUTHORIZED: ['Not allowed', 'The delete token was not accepted.'],
};

function storage() {
  try {
    return window.localStorage;
  } catch {
    return null; // storage disabled: deleting later needs the no-JS one-time token instead
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child != null) node.append(child);
  }
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function percent(score, digits = 1) {
  return `${(score * 100).toFixed(digits)}%`;
}

function humanBytes(bytes) {
  const units = ['bytes', 'KiB', 'MiB', 'GiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${bytes} bytes` : `${value.toFixed(1)} ${units[unit]}`;
}

/** Fills an error box: friendly title and advice, the server's message, the stable code and the request id. */
function showError(box, { code, message, request_id: requestId }, vars = {}) {
  const [title, advice] = FRIENDLY[code] || ['That did not work', ''];
  const fill = (text) => text.replace(/\{(\w+)\}/g, (_, name) => vars[name] ?? '');
  const meta = el('p', { class: 'alert-meta' });
  if (message) meta.append(`${message} · `);
  meta.append('Error code: ', el('code', { class: 'error-code', text: code }));
  if (requestId) meta.append(' · Request id: ', el('code', { text: requestId }));
  box.replaceChildren(
    el('p', { class: 'alert-title', text: title }),
    advice ? el('p', { text: fill(advice) }) : null,
    meta,
  );
  box.hidden = false;
}

/** One row per prediction: label, percentage, and an SVG bar whose width is the score. */
function predictionList(predictions) {
  const list = el('ol', { class: 'predictions' });
  for (const p of predictions) {
    const bar = svg('svg', {
      class: 'bar',
      viewBox: '0 0 100 6',
      preserveAspectRatio: 'none',
      'aria-hidden': 'true',
      focusable: 'false',
    });
    bar.append(
      svg('rect', { class: 'bar-track', x: 0, y: 0, width: 100, height: 6 }),
      svg('rect', { class: 'bar-fill', x: 0, y: 0, width: (p.score * 100).toFixed(2), height: 6 }),
    );
    list.append(
      el(
        'li',
        { class: 'prediction' },
        el('span', { class: 'prediction-label', text: p.label }),
        el('span', { class: 'prediction-score', text: percent(p.score) }),
        bar,
      ),
    );
  }
  return list;
}

function faceSummary(image) {
  const faces = image.faces || [];
  if (faces.length === 0) return el('p', { class: 'result-summary', text: 'No faces found, so no selfie analysis.' });
  const count = faces.length === 1 ? '1 face found.' : `${faces.length} faces found.`;
  const para = el('p', { class: 'result-summary' }, count);
  if (image.selfie) {
    para.append(
      ' Colour season: ',
      el('strong', { class: 'result-season', text: image.selfie.season }),
      ` (confidence ${percent(image.selfie.confidence, 0)}; ${image.selfie.undertone}, ${image.selfie.value}, ${image.selfie.clarity}).`,
    );
  } else if (image.selfie_reason) {
    const reason = image.selfie_reason;
    para.append(` No selfie analysis: ${reason.charAt(0).toLowerCase()}${reason.slice(1).replace(/\.?$/, '.')}`);
  }
  return para;
}

async function deleteImage(id, token) {
  const response = await fetch(`/api/v1/images/${encodeURIComponent(id)}`, {
    method: 'DELETE',
    headers: { 'X-Delete-Token': token },
    credentials: 'omit',
  });
  if (response.status === 204 || response.status === 404) {
    storage()?.removeItem(TOKEN_PREFIX + id);
    window.location.assign('/?deleted=true');
    return null;
  }
  return readError(response.status, await response.text(), response.headers.get('X-Request-Id'));
}

function readError(status, text, requestId) {
  try {
    const body = JSON.parse(text);
    if (body && body.error && body.error.code) return body.error;
  } catch {
    // not JSON (a proxy's page, say): fall through
  }
  return { code: status === 413 ? 'PAYLOAD_TOO_LARGE' : `HTTP_${status}`, message: '', request_id: requestId || '' };
}

/* ---------------------------------------------------------------- upload page */

function setUpUpload(form) {
  const input = form.querySelector('#file');
  const dropzone = form.querySelector('#dropzone');
  const preview = form.querySelector('#preview');
  const caption = form.querySelector('#preview-caption');
  const progress = form.querySelector('#progress');
  const bar = form.querySelector('#progress-bar');
  const cancel = form.querySelector('#cancel-upload');
  const status = form.querySelector('#upload-status');
  const errorBox = form.querySelector('#upload-error');
  const submit = form.querySelector('#upload-button');
  const result = document.getElementById('result');
  const resultBody = document.getElementById('result-body');
  const formMaxBytes = Number(form.dataset.maxBytes) || Infinity;
  // Files over the form's limit (or all, when configured) go straight to the store by a direct upload session.
  const directMaxBytes = Number(form.dataset.directMaxBytes) || 0;
  const directAlways = form.dataset.directAlways === 'true';
  const maxBytes = Math.max(formMaxBytes, directMaxBytes);
  const vars = {
    max: (directMaxBytes > formMaxBytes ? form.dataset.directMaxHuman : form.dataset.maxHuman) || '',
    formats: form.dataset.formats || '',
  };
  const maxSize = document.getElementById('max-size');
  if (maxSize && vars.max) maxSize.textContent = vars.max;
  let previewUrl = null;
  let xhr = null;

  const setStatus = (text) => {
    status.textContent = text;
  };

  const clearError = () => {
    errorBox.hidden = true;
    errorBox.replaceChildren();
    document.getElementById('server-error')?.remove();
  };

  const checkSize = (file) => {
    if (file && file.size > maxBytes) {
      showError(errorBox, { code: 'PAYLOAD_TOO_LARGE', message: `${file.name} is ${humanBytes(file.size)}.` }, vars);
      errorBox.scrollIntoView({ block: 'nearest' });
      return false;
    }
    return true;
  };

  const showPreview = () => {
    const file = input.files && input.files[0];
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    preview.replaceChildren();
    clearError();
    if (!file) {
      preview.hidden = true;
      return;
    }
    const img = el('img', { class: 'preview-image', id: 'preview-image', alt: `Preview of ${file.name}` });
    if (file.type.startsWith('image/')) {
      previewUrl = URL.createObjectURL(file);
      img.src = previewUrl;
      img.addEventListener('error', () => img.remove(), { once: true });
      preview.append(img);
    }
    caption.textContent = `${file.name} · ${humanBytes(file.size)}`;
    preview.append(caption);
    preview.hidden = false;
    checkSize(file);
  };

  input.addEventListener('change', showPreview);

  // Drag and drop onto the whole zone. The zone's label and the native file input stay the keyboard path.
  let depth = 0;
  dropzone.addEventListener('dragenter', (event) => {
    event.preventDefault();
    depth += 1;
    dropzone.classList.add('is-dragover');
  });
  dropzone.addEventListener('dragover', (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = 'copy';
  });
  dropzone.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) dropzone.classList.remove('is-dragover');
  });
  dropzone.addEventListener('drop', (event) => {
    event.preventDefault();
    depth = 0;
    dropzone.classList.remove('is-dragover');
    const files = event.dataTransfer && event.dataTransfer.files;
    if (!files || files.length === 0) return;
    const transfer = new DataTransfer();
    transfer.items.add(files[0]);
    input.files = transfer.files;
    showPreview();
    setStatus(`${files[0].name} is ready to upload.`);
    // Start the upload at once, as people expect from a drop.
    form.requestSubmit(submit);
  });

  cancel.addEventListener('click', () => {
    if (xhr) xhr.abort();
  });

  const finish = () => {
    xhr = null;
    progress.hidden = true;
    submit.disabled = false;
    form.removeAttribute('aria-busy');
  };

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (xhr) return;
    clearError();
    const file = input.files && input.files[0];
    if (!file) {
      showError(errorBox, { code: 'MISSING_FILE', message: '' }, vars);
      input.focus();
      return;
    }
    if (!checkSize(file)) return;

    const description = form.querySelector('#description').value;
    const direct = directMaxBytes > 0 && (directAlways || file.size > formMaxBytes);
    bar.value = 0;
    bar.textContent = '0%';
    progress.hidden = false;
    submit.disabled = true;
    form.setAttribute('aria-busy', 'true');
    result.hidden = true;
    setStatus(`Uploading ${file.name}…`);

    /** An answer that is an error: shown, and the form is ready again. */
    const failed = (request) => {
      finish();
      setStatus('');
      showError(errorBox, readError(request.status, request.responseText, request.getResponseHeader('X-Request-Id')), vars);
      errorBox.scrollIntoView({ block: 'nearest' });
    };
    const stored = (text) => {
      let image;
      try {
        image = JSON.parse(text);
      } catch {
        showError(errorBox, { code: 'BAD_RESPONSE', message: 'The server sent an answer we could not read.' }, vars);
        return;
      }
      if (image.delete_token) storage()?.setItem(TOKEN_PREFIX + image.id, image.delete_token);
      setStatus('Upload complete.');
      showResult(image);
    };
    /** One request; `done` gets it finished. With `progress`, the bar follows its body (the file's). */
    const send = (method, url, headers, body, done, { progress = true } = {}) => {
      xhr = new XMLHttpRequest();
      xhr.open(method, url);
      for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
      xhr.responseType = 'text';
      let lastAnnounced = -1;
      if (progress) {
        xhr.upload.addEventListener('progress', (e) => {
          if (!e.lengthComputable) return;
          const pct = Math.round((e.loaded / e.total) * 100);
          bar.value = pct;
          bar.textContent = `${pct}%`;
          // Announce in steps of 25% so screen readers are not flooded.
          const step = Math.floor(pct / 25);
          if (step !== lastAnnounced) {
            lastAnnounced = step;
            setStatus(pct >= 100 ? 'Upload sent; analysing the image…' : `Uploading ${file.name}: ${pct}%`);
          }
        });
        xhr.upload.addEventListener('load', () => {
          bar.value = 100;
          setStatus('Upload sent; analysing the image…');
        });
      }
      xhr.addEventListener('abort', () => {
        finish();
        setStatus('Upload cancelled. Nothing was stored.');
      });
      xhr.addEventListener('error', () => {
        finish();
        setStatus('');
        showError(errorBox, { code: 'NETWORK_ERROR', message: '' }, vars);
      });
      xhr.addEventListener('load', () => done(xhr));
      xhr.send(body);
    };
    /** A small JSON request of the direct path (the session, its completion): no progress of its own. */
    const call = (url, body, done) => {
      const headers = { Accept: 'application/json' };
      if (body !== null) headers['Content-Type'] = 'application/json';
      send('POST', url, headers, body === null ? null : JSON.stringify(body), done, { progress: false });
    };

    if (!direct) {
      const data = new FormData();
      data.append('file', file, file.name);
      data.append('description', description);
      send('POST', form.dataset.api, { Accept: 'application/json' }, data, (request) => {
        if (request.status !== 201 && request.status !== 200) return failed(request);
        finish();
        stored(request.responseText);
      });
      return;
    }

    // Direct: open a session, PUT the file where it says (with the headers it signed), then complete it.
    const accepted = ['image/jpeg', 'image/png', 'image/webp', 'image/gif', 'image/heic', 'image/avif'];
    const session = { filename: file.name, byte_size: file.size, description };
    if (accepted.includes(file.type)) session.content_type = file.type;
    call(form.dataset.directApi, session, (opened) => {
      if (opened.status !== 201) return failed(opened);
      const target = JSON.parse(opened.responseText);
      // The browser sets the length itself, and refuses to be told it.
      const headers = Object.fromEntries(
        Object.entries(target.headers || {}).filter(([name]) => !['content-length', 'host'].includes(name.toLowerCase())),
      );
      const sessionUrl = `${form.dataset.directApi}/${encodeURIComponent(target.id)}`;
      // Another worker (the bucket's event) may be processing the file when we ask, or the load balancer may
      // give up on a long completion: then the session's status tells the truth, and once it is finished,
      // completing again answers with its image or its error.
      const giveUpAt = Date.now() + DIRECT_WAIT_MS;
      let waiting = null;
      const stillProcessing = (request) =>
        request.status >= 502 || (request.status === 409 && readError(409, request.responseText).code === 'UPLOAD_IN_PROGRESS');
      const retryLater = (request, next) => {
        if (Date.now() > giveUpAt) return failed(request);
        setStatus('Upload sent; the image is being processed…');
        waiting = setTimeout(() => {
          waiting = null;
          if (!cancelled) next();
        }, DIRECT_POLL_MS);
      };
      let cancelled = false;
      cancel.addEventListener('click', () => {
        cancelled = true;
        if (waiting !== null) {
          clearTimeout(waiting);
          finish();
          setStatus('Upload cancelled while the image was being processed; it may still be stored.');
        }
      }, { once: true });
      const complete = () => call(`${sessionUrl}/complete`, null, (completed) => {
        if (completed.status === 201) {
          finish();
          return stored(completed.responseText);
        }
        if (!stillProcessing(completed)) return failed(completed);
        retryLater(completed, awaitFinished);
      });
      const awaitFinished = () => send('GET', sessionUrl, { Accept: 'application/json' }, null, (answer) => {
        let state = null;
        try {
          state = JSON.parse(answer.responseText);
        } catch {
          state = null;
        }
        if (answer.status === 200 && state && (state.status === 'stored' || state.status === 'failed')) return complete();
        if (answer.status !== 200 && !stillProcessing(answer)) return failed(answer);
        retryLater(answer, awaitFinished);
      }, { progress: false });
      send(target.method, target.url, headers, file, (put) => {
        if (put.status < 200 || put.status >= 300) return failed(put);
        complete();
      });
    });
  });

  function showResult(image) {
    const name = image.original_filename || 'Untitled image';
    const thumb = el('img', {
      class: 'result-thumb',
      src: image.urls.thumbnail,
      alt: image.description || `Thumbnail of ${name}`,
      width: image.width,
      height: image.height,
    });
    const details = el(
      'div',
      { class: 'result-details' },
      el('p', { class: 'filename result-name' }, el('strong', { text: name }), ` · ${String(image.format).toUpperCase()} · ${image.width} × ${image.height} · ${humanBytes(image.byte_size)}`),
    );
    if (image.deduplicated) details.append(el('p', { class: 'muted', text: 'The same image was already stored; it is shared, and you have your own delete token.' }));
    if (image.predictions && image.predictions.length > 0) {
      details.append(el('h3', { class: 'result-subheading', text: 'What the model sees' }), predictionList(image.predictions));
    } else {
      details.append(el('p', { text: 'The model found nothing it could name with confidence.' }));
    }
    details.append(faceSummary(image));
    if (image.model) {
      const ms = image.inference_ms != null ? ` · analysed in ${Number(image.inference_ms).toFixed(1)} ms` : '';
      details.append(el('p', { class: 'muted model-line', text: `Model: ${image.model.name} ${image.model.version}${ms}` }));
    }

    const deleteError = el('div', { class: 'alert alert-error', role: 'alert', hidden: '' });
    const deleteButton = el('button', { type: 'button', class: 'button button-danger', id: 'result-delete', text: 'Delete this image' });
    deleteButton.addEventListener('click', async () => {
      deleteButton.disabled = true;
      const error = await deleteImage(image.id, image.delete_token).catch(() => ({ code: 'NETWORK_ERROR' }));
      if (error) {
        deleteButton.disabled = false;
        showError(deleteError, error, vars);
      }
    });
    const actions = el(
      'p',
      { class: 'actions' },
      el('a', { class: 'button button-primary', id: 'result-link', href: image.urls.page, text: 'Open the result page' }),
      deleteButton,
    );
    resultBody.replaceChildren(el('div', { class: 'result-grid' }, el('a', { href: image.urls.page, class: 'thumbnail-link' }, thumb), details), actions, deleteError);
    result.hidden = false;
    const heading = document.getElementById('result-heading');
    heading.focus({ preventScroll: true });
    result.scrollIntoView({ behavior: 'smooth', block: 'start' });
  }
}

/* ---------------------------------------------------------------- result page */

function setUpCopy(button) {
  const target = document.getElementById(button.dataset.copyTarget);
  const status = document.getElementById('copy-status');
  button.addEventListener('click', async () => {
    target.select();
    try {
      await navigator.clipboard.writeText(target.value);
      status.textContent = 'Link copied.';
    } catch {
      // Clipboard API refused (permissions, insecure origin): the text is selected for a manual copy.
      status.textContent = 'Press Ctrl+C (or ⌘C) to copy the selected link.';
    }
  });
}

function setUpOwnerDelete(button) {
  const id = button.dataset.imageId;
  const token = storage()?.getItem(TOKEN_PREFIX + id);
  if (!token) return; // not the uploader's browser: nothing to show
  const errorBox = document.getElementById('delete-error');
  button.hidden = false;
  button.addEventListener('click', async () => {
    button.disabled = true;
    const error = await deleteImage(id, token).catch(() => ({ code: 'NETWORK_ERROR' }));
    if (error) {
      button.disabled = false;
      showError(errorBox, error);
    }
  });
}

/* ---------------------------------------------------------------- placeholders */

/** Paints each image's ThumbHash likeness (a data: PNG the page carries) behind it until the image has loaded. */
function paintPlaceholders() {
  for (const img of document.querySelectorAll('img[data-placeholder]')) {
    if (img.complete && img.naturalWidth > 0) continue;
    img.style.backgroundImage = `url("${img.dataset.placeholder}")`;
    img.style.backgroundSize = '100% 100%';
    img.classList.add('placeholder-shown');
    img.addEventListener('load', () => {
      img.style.backgroundImage = '';
      img.classList.remove('placeholder-shown');
    }, { once: true });
  }
}

/* ---------------------------------------------------------------- start */

function start() {
  document.documentElement.classList.add('js');
  paintPlaceholders();
  for (const node of document.querySelectorAll('.js-only')) node.hidden = false;
  const form = document.getElementById('upload-form');
  if (form) setUpUpload(form);
  const copy = document.getElementById('copy-link');
  if (copy) setUpCopy(copy);
  const ownerDelete = document.getElementById('owner-delete');
  if (ownerDelete) setUpOwnerDelete(ownerDelete);
}

start();
