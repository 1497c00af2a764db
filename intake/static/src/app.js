// The registrant's page: registration (every error at once, per field; a 503 is a countdown
// and a retry with the same Idempotency-Key), the status (each check, the place in line),
// the SMS code, the selfie (downscaled, with progress, retried), the test and joining a wave;
// and the email link's page, whose button confirms. No library: the DOM and fetch.

var lang = "id";
var SESSION = "intake.registration";
var PHOTO_LONG_SIDE = 1280;
var POLL_MS = 4000;
var $ = function (id) { return document.getElementById(id); };

function t(key, values) {
  var text = STRINGS[lang][key];
  if (text === undefined) text = key;
  Object.keys(values || {}).forEach(function (name) {
    text = text.split("{" + name + "}").join(String(values[name]));
  });
  return text;
}

function storedLang() {
  try { return localStorage.getItem("intake.lang"); } catch (e) { return null; }
}

function applyLanguage() {
  document.documentElement.lang = lang;
  document.querySelectorAll("[data-t]").forEach(function (el) {
    el.textContent = t(el.getAttribute("data-t"));
  });
  var toggle = $("lang");
  toggle.textContent = t("other_language");
  toggle.lang = lang === "id" ? "en" : "id";
  if (typeof rerender === "function") rerender();
}

// --- HTTP --------------------------------------------------------------------------------------

// {status, body, retryAfter}; status 0 when the request never got an answer.
function api(method, url, options) {
  options = options || {};
  var headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  if (options.token) headers.Authorization = "Bearer " + options.token;
  var init = { method: method, headers: headers, credentials: "omit", cache: "no-store" };
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.json);
  }
  return fetch(url, init).then(function (response) {
    var retryAfter = Number(response.headers.get("Retry-After")) || 0;
    return response.text().then(function (text) {
      var body = null;
      try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
      return { status: response.status, body: body, retryAfter: retryAfter };
    });
  }, function () {
    return { status: 0, body: null, retryAfter: 0 };
  });
}

function problemOf(request) {
  try { return slug(JSON.parse(request.responseText)); } catch (e) { return ""; }
}

function slug(body) {
  return body && typeof body.type === "string" ? body.type.split("/").pop() : "";
}

function randomKey() {
  var bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, function (b) { return b.toString(16).padStart(2, "0"); }).join("");
}

// Count down `seconds` in `box` with the message `key`, then call `then`.
function countdown(box, key, seconds, then) {
  var left = Math.max(1, Math.ceil(seconds));
  box.hidden = false;
  box.textContent = t(key, { s: left });
  var timer = setInterval(function () {
    left -= 1;
    if (left > 0) {
      box.textContent = t(key, { s: left });
      return;
    }
    clearInterval(timer);
    box.textContent = t("retrying");
    then();
  }, 1000);
}

// --- registration ------------------------------------------------------------------------------

var pending = null; // {body, key}: the registration being sent, retried as it is

function formBody() {
  var body = {};
  RULES.fields.forEach(function (name) { body[name] = $(name).value; });
  return body;
}

function showErrors(errors) {
  var byField = {};
  errors.forEach(function (error) {
    if (!byField[error.field]) byField[error.field] = [];
    byField[error.field].push(t("codes")[error.code] || error.code);
  });
  RULES.fields.forEach(function (name) {
    var input = $(name);
    var messages = byField[name] || [];
    $(name + "-error").textContent = messages.join(" ");
    if (messages.length) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  });
  var summary = $("form-summary");
  var invalid = RULES.fields.filter(function (name) { return byField[name]; });
  summary.textContent = "";
  if (!invalid.length) {
    summary.hidden = true;
    return;
  }
  var heading = document.createElement("p");
  heading.textContent = t("summary", { n: invalid.length });
  var list = document.createElement("ul");
  invalid.forEach(function (name) {
    var item = document.createElement("li");
    var link = document.createElement("a");
    link.href = "#" + name;
    link.textContent = document.querySelector("label[for='" + name + "']").textContent +
      ": " + byField[name].join(" ");
    link.addEventListener("click", function (event) {
      event.preventDefault();
      $(name).focus();
    });
    item.appendChild(link);
    list.appendChild(item);
  });
  summary.appendChild(heading);
  summary.appendChild(list);
  summary.hidden = false;
  summary.focus();
}

function onRegister(event) {
  event.preventDefault();
  var body = formBody();
  var verdict = validateRegistration(body, todayWib(Date.now()));
  showErrors(verdict.errors);
  if (verdict.errors.length) return;
  if (!pending || JSON.stringify(pending.body) !== JSON.stringify(body)) {
    pending = { body: body, key: randomKey() }; // the same form again keeps its key
  }
  sendRegistration();
}

function sendRegistration() {
  var button = $("register-submit");
  var wait = $("wait");
  button.disabled = true;
  wait.hidden = false;
  wait.textContent = t("sending");
  api("POST", "/v1/registrations", {
    json: pending.body, headers: { "Idempotency-Key": pending.key },
  }).then(function (answer) {
    if (answer.status === 503 || answer.status === 0) {
      // Not accepted, no promise: the same registration again, once the wait is over.
      countdown(wait, answer.status ? "busy" : "network", answer.retryAfter || 5, sendRegistration);
      return;
    }
    button.disabled = false;
    wait.hidden = true;
    if (answer.status === 202) {
      pending = null;
      save({ id: answer.body.id, token: answer.body.access_token, url: answer.body.status_url });
      showStatus(true);
    } else if (answer.status === 422 && answer.body && answer.body.errors) {
      showErrors(answer.body.errors);
    } else {
      wait.hidden = false;
      wait.textContent = t("failed", { status: answer.status });
    }
  });
}

// --- the registration's session ----------------------------------------------------------------

function save(session) {
  try { localStorage.setItem(SESSION, JSON.stringify(session)); } catch (e) { /* private mode */ }
  current = session;
}

function load() {
  try { return JSON.parse(localStorage.getItem(SESSION) || "null"); } catch (e) { return null; }
}

var current = null;
var status = null;
var pollTimer = null;

function showStatus(focus) {
  $("view-register").hidden = true;
  $("view-status").hidden = false;
  if (focus) $("status-heading").focus();
  poll();
}

function poll() {
  clearTimeout(pollTimer);
  if (!current) return;
  api("GET", current.url, { token: current.token }).then(function (answer) {
    var next = POLL_MS;
    if (answer.status === 200) {
      status = answer.body;
      rerender();
    } else if (answer.status === 404) {
      forget();
      return;
    } else if (answer.retryAfter) {
      next = answer.retryAfter * 1000;
    }
    pollTimer = setTimeout(poll, next);
  });
}

function duration(seconds) {
  return seconds < 90 ? t("seconds", { n: Math.max(1, Math.round(seconds)) })
    : t("minutes", { n: Math.round(seconds / 60) });
}

// A rejection's reason in words; other photo outcomes as one, and an unknown code as it is.
function reasonText(reason) {
  var reasons = t("reasons");
  if (!reason) return "";
  if (reasons[reason]) return reasons[reason];
  return reason.indexOf("photo_") === 0 ? reasons.photo : reason;
}

function stepName(step) {
  return t("checks")[step] || step;
}

function rerender() {
  if (!status) return;
  var summaryKey = "status_" + status.status;
  $("status-summary").textContent = t(summaryKey, { reason: reasonText(status.reason) });
  var checks = $("checks");
  checks.textContent = "";
  Object.keys(status.checks || {}).forEach(function (name) {
    var check = status.checks[name];
    var item = document.createElement("li");
    item.appendChild(document.createTextNode(stepName(name) + ": "));
    var state = document.createElement("span");
    state.className = "state " + check.state;
    state.textContent = t("states")[check.state] || check.state;
    item.appendChild(state);
    checks.appendChild(item);
  });
  var line = $("line");
  line.textContent = "";
  Object.keys(status.line || {}).forEach(function (step) {
    var place = status.line[step];
    var item = document.createElement("li");
    if (place.basis === "waiting_for_you") {
      item.textContent = t("line_yours", { step: stepName(step) });
    } else if (place.position === null) {
      item.textContent = t("line_storing", { step: stepName(step) });
    } else {
      item.textContent = t("line_position", { step: stepName(step), n: place.position + 1 }) +
        (place.eta_s === null ? "" : t("line_eta", { s: duration(place.eta_s) }));
    }
    line.appendChild(item);
  });
  var checkState = function (name) { return status.checks && status.checks[name] && status.checks[name].state; };
  $("panel-email").hidden = checkState("email") !== "waiting";
  $("otp-form").hidden = checkState("phone") !== "waiting";
  $("photo-form").hidden = !(checkState("photo") === "waiting" || uploading);
  var verified = status.status === "verified";
  var test = status.test;
  var wave = status.wave;
  $("panel-test").hidden = !verified || !!wave;
  if (verified && !wave) {
    var scored = test && test.state === "scored";
    $("test-start").hidden = scored || (test && test.state === "submitted") || !$("test-form").hidden;
    $("test-start").textContent = t(test && test.state === "in_progress" ? "test_continue" : "test_start");
    if (scored) $("test-msg").textContent = t("test_score", { n: test.score });
    else if (test && test.state === "submitted") $("test-msg").textContent = t("test_sent");
  }
  $("join-form").hidden = !(verified && test && test.state === "scored" && !wave);
  if (wave) {
    var key = wave.state === "joined" ? "joined" : "wave_" + wave.state;
    $("status-summary").textContent = t(key, { name: wave.name });
  }
  var select = $("situation");
  var chosen = select.value;
  select.textContent = "";
  RULES.situations.forEach(function (name) {
    var option = document.createElement("option");
    option.value = name;
    option.textContent = t("situations")[name];
    select.appendChild(option);
  });
  if (chosen) select.value = chosen;
}

function forget() {
  try { localStorage.removeItem(SESSION); } catch (e) { /* private mode */ }
  clearTimeout(pollTimer);
  current = null;
  status = null;
  $("view-status").hidden = true;
  $("view-register").hidden = false;
  $("register-form").reset();
}

// --- email, code ---------------------------------------------------------------------------

function resend(channel, box) {
  api("POST", current.url + "/" + channel + "/resend", { token: current.token }).then(function (answer) {
    if (answer.status === 202) box.textContent = t("resent", { n: answer.body.resends_left });
    else if (answer.retryAfter) box.textContent = t("resend_wait", { s: answer.retryAfter });
    else box.textContent = (answer.body && answer.body.title) || t("failed", { status: answer.status });
    poll();
  });
}

function onOtp(event) {
  event.preventDefault();
  var input = $("otp");
  var error = $("otp-error");
  var code = input.value.trim();
  if (!/^[0-9]{6}$/.test(code)) {
    input.setAttribute("aria-invalid", "true");
    error.textContent = t("otp_format");
    input.focus();
    return;
  }
  api("POST", current.url + "/otp", { token: current.token, json: { code: code } }).then(function (answer) {
    var kind = slug(answer.body);
    if (answer.status === 200) {
      input.removeAttribute("aria-invalid");
      error.textContent = "";
      input.value = "";
    } else {
      input.setAttribute("aria-invalid", "true");
      if (kind === "wrong-code") error.textContent = t("otp_wrong", { n: answer.body.attempts_left });
      else if (kind === "otp-locked") error.textContent = t("otp_locked");
      else if (kind === "code-expired") error.textContent = t("otp_expired");
      else error.textContent = t("failed", { status: answer.status });
    }
    poll();
  });
}

// --- the selfie ----------------------------------------------------------------------------

var uploading = false;
var photoBlob = null;

// The photo at most PHOTO_LONG_SIDE pixels on its long side, as a JPEG: a fraction of a phone
// camera's bytes, and all the photo check needs.
function downscale(file) {
  return createImageBitmap(file, { imageOrientation: "from-image" }).then(function (bitmap) {
    var scale = Math.min(1, PHOTO_LONG_SIDE / Math.max(bitmap.width, bitmap.height));
    var canvas = document.createElement("canvas");
    canvas.width = Math.round(bitmap.width * scale);
    canvas.height = Math.round(bitmap.height * scale);
    canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    return new Promise(function (resolve) { canvas.toBlob(resolve, "image/jpeg", 0.9); });
  });
}

function onPhotoChosen() {
  var file = $("photo").files[0];
  photoBlob = null;
  if (!file) return;
  $("photo-msg").textContent = t("photo_preparing");
  downscale(file).then(function (blob) {
    photoBlob = blob;
    var preview = $("photo-preview");
    preview.src = URL.createObjectURL(blob);
    preview.alt = t("photo_label");
    preview.hidden = false;
    $("photo-msg").textContent = "";
  }, function () {
    $("photo-msg").textContent = t("photo_bad");
  });
}

function onPhoto(event) {
  event.preventDefault();
  if (!photoBlob) {
    $("photo-msg").textContent = t("photo_choose");
    $("photo").focus();
    return;
  }
  upload();
}

// PUT the same bytes until the edge has them: a retried upload of the same photo is answered
// 202 again, so an answer lost on the way is harmless.
function upload() {
  uploading = true;
  $("photo-submit").disabled = true;
  var progress = $("photo-progress");
  var message = $("photo-msg");
  progress.hidden = false;
  var request = new XMLHttpRequest();
  request.open("PUT", current.url + "/photo");
  request.setRequestHeader("Authorization", "Bearer " + current.token);
  request.setRequestHeader("Content-Type", "image/jpeg");
  request.upload.onprogress = function (e) {
    if (!e.lengthComputable) return;
    progress.value = Math.round(100 * e.loaded / e.total);
    message.textContent = t("photo_progress", { p: progress.value });
  };
  var retry = function (seconds) {
    countdown(message, "photo_retry", seconds, upload);
  };
  request.onload = function () {
    if (request.status === 202) {
      uploading = false;
      progress.value = 100;
      message.textContent = t("photo_done");
      $("photo-submit").disabled = false;
      poll();
    } else if (request.status === 503 || (request.status === 409 && problemOf(request) === "not-ready")) {
      retry(Number(request.getResponseHeader("Retry-After")) || 3);
    } else {
      uploading = false;
      $("photo-submit").disabled = false;
      message.textContent = t("failed", { status: request.status });
      poll();
    }
  };
  request.onerror = function () { retry(3); };
  request.send(photoBlob);
}

// --- the test and joining --------------------------------------------------------------------

var attempt = null;
var testTimer = null;

function startTest() {
  api("GET", current.url + "/test", { token: current.token }).then(function (answer) {
    if (answer.status !== 200) {
      $("test-msg").textContent = slug(answer.body) === "no-wave" ? t("test_none")
        : (answer.body && answer.body.title) || t("failed", { status: answer.status });
      return;
    }
    attempt = answer.body;
    var box = $("questions");
    box.textContent = "";
    attempt.questions.forEach(function (question, index) {
      var fieldset = document.createElement("fieldset");
      var legend = document.createElement("legend");
      legend.textContent = (index + 1) + ". " + question.text[lang];
      fieldset.appendChild(legend);
      question.options.forEach(function (option, choice) {
        var label = document.createElement("label");
        var input = document.createElement("input");
        input.type = "radio";
        input.name = "q-" + question.id;
        input.value = String(choice);
        label.appendChild(input);
        label.appendChild(document.createTextNode(option[lang]));
        fieldset.appendChild(label);
      });
      box.appendChild(fieldset);
    });
    $("test-form").hidden = false;
    $("test-start").hidden = true;
    var deadline = Date.parse(attempt.deadline_at);
    clearInterval(testTimer);
    var tick = function () {
      var left = (deadline - Date.now()) / 1000;
      $("test-timer").textContent = left > 0 ? t("test_time", { s: duration(left) }) : t("test_over");
    };
    tick();
    testTimer = setInterval(tick, 1000);
    box.querySelector("input").focus();
  });
}

function onTest(event) {
  event.preventDefault();
  var answers = {};
  attempt.questions.forEach(function (question) {
    var chosen = document.querySelector("input[name='q-" + question.id + "']:checked");
    if (chosen) answers[question.id] = Number(chosen.value);
  });
  api("POST", current.url + "/test", {
    token: current.token, json: { attempt: attempt.attempt, answers: answers },
  }).then(function (answer) {
    if (answer.status === 202) {
      clearInterval(testTimer);
      $("test-form").hidden = true;
      $("test-msg").textContent = t("test_sent");
    } else {
      $("test-msg").textContent = (answer.body && answer.body.title) || t("failed", { status: answer.status });
    }
    poll();
  });
}

function onJoin(event) {
  event.preventDefault();
  api("POST", current.url + "/wave", {
    token: current.token, json: { situation: $("situation").value },
  }).then(function (answer) {
    $("join-msg").textContent = answer.status === 202 ? "" : slug(answer.body) === "wave-not-open"
      ? t("wave_closed") : (answer.body && answer.body.title) || t("failed", { status: answer.status });
    poll();
  });
}

// --- the email link's page ---------------------------------------------------------------------

function onConfirm(event) {
  event.preventDefault();
  var button = $("confirm");
  var message = $("confirm-msg");
  button.disabled = true;
  api("POST", location.pathname + location.search).then(function (answer) {
    var kind = slug(answer.body);
    if (answer.status === 503 || answer.status === 0) {
      countdown(message, answer.status ? "busy" : "network", answer.retryAfter || 5, function () {
        onConfirm(event);
      });
      return;
    }
    button.disabled = false;
    if (answer.status === 200) {
      button.hidden = true;
      message.textContent = t(answer.body.result === "verified" ? "confirm_done" : "confirm_already");
    } else if (kind === "link-expired" || kind === "link-replaced") {
      message.textContent = t("confirm_expired");
    } else {
      message.textContent = t("confirm_invalid");
    }
  });
}

// --- start ---------------------------------------------------------------------------------

function start() {
  lang = storedLang() === "en" ? "en" : "id";
  $("lang").addEventListener("click", function () {
    lang = lang === "id" ? "en" : "id";
    try { localStorage.setItem("intake.lang", lang); } catch (e) { /* private mode */ }
    applyLanguage();
  });
  applyLanguage();
  if ($("confirm-form")) {
    $("confirm-form").addEventListener("submit", onConfirm);
    return;
  }
  $("register-form").addEventListener("submit", onRegister);
  $("otp-form").addEventListener("submit", onOtp);
  $("otp-resend").addEventListener("click", function () { resend("otp", $("otp-error")); });
  $("email-resend").addEventListener("click", function () { resend("email", $("email-msg")); });
  $("photo").addEventListener("change", onPhotoChosen);
  $("photo-form").addEventListener("submit", onPhoto);
  $("test-start").addEventListener("click", startTest);
  $("test-form").addEventListener("submit", onTest);
  $("join-form").addEventListener("submit", onJoin);
  $("forget").addEventListener("click", forget);
  current = load();
  if (current) showStatus(false);
}

start();
