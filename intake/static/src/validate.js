// The page's validation of the registration form: intake/validation.py's rules, applied to
// RULES (rules.js, generated from the API's own sources). It returns every error at once, per
// field, with the API's codes, in the API's order; and the values as the API normalises them.
// tests/intake/test_page.py runs it in node against the API over a corpus of inputs.

var WS = new RegExp("[" + RULES.whitespace.replace(/[\\\]^-]/g, "\\$&") + "]+", "g");
var WS_EDGES = new RegExp("^[" + RULES.whitespace.replace(/[\\\]^-]/g, "\\$&") + "]+|[" +
  RULES.whitespace.replace(/[\\\]^-]/g, "\\$&") + "]+$", "g");
var NIK_RE = new RegExp(RULES.nikPattern);
var DATE_RE = new RegExp(RULES.datePattern);
var EMAIL_RE = new RegExp(RULES.emailPattern);
var PHONE_RE = new RegExp(RULES.phonePattern);
// Letters of any script first, then letters, combining diacritics and ' . , - and spaces.
var NAME_RE = /^\p{L}[\p{L}\u0300-\u036f '.,\-]*$/u;
var PROVINCES = new Set(RULES.provinces);

function strip(value) {
  return value.replace(WS_EDGES, "");
}

function chars(value) {
  return Array.from(value).length; // code points, as Python counts them
}

function pad(number, width) {
  return String(number).padStart(width, "0");
}

function isoDay(year, month, day) {
  return pad(year, 4) + "-" + pad(month, 2) + "-" + pad(day, 2);
}

function realDay(year, month, day) {
  if (year < 1 || month < 1 || month > 12 || day < 1) return false;
  var leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  var lengths = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
  return day <= lengths[month - 1];
}

function nikBirthDayMonth(nik) {
  var day = Number(nik.slice(6, 8));
  var month = Number(nik.slice(8, 10));
  if (day > 40) day -= 40;
  if (!(month >= 1 && month <= 12 && day >= 1 && day <= 31)) return null;
  if (!realDay(2000, month, day)) return null; // a leap year: 29 February is possible
  return [day, month];
}

function Invalid(code) {
  this.code = code;
}

function checkNik(value) {
  var nik = strip(value);
  if (!NIK_RE.test(nik)) throw new Invalid("nik_format");
  if (!PROVINCES.has(Number(nik.slice(0, 2)))) throw new Invalid("nik_province");
  if (nik.slice(2, 4) === "00" || nik.slice(4, 6) === "00") throw new Invalid("nik_region");
  if (nikBirthDayMonth(nik) === null) throw new Invalid("nik_birth_date");
  if (nik.slice(12, 16) === "0000") throw new Invalid("nik_serial");
  return nik;
}

// Completed years on `today` ([y, m, d]) of someone born on `born` ([y, m, d]).
function ageOn(born, today) {
  var before = today[1] < born[1] || (today[1] === born[1] && today[2] < born[2]);
  return today[0] - born[0] - (before ? 1 : 0);
}

function checkBirthDate(value, today) {
  var text = strip(value);
  if (!DATE_RE.test(text)) throw new Invalid("date_format");
  var born = text.split("-").map(Number);
  if (!realDay(born[0], born[1], born[2])) throw new Invalid("date_format");
  var now = today.split("-").map(Number);
  if (text > today || born[0] < 1900) throw new Invalid("date_range");
  if (ageOn(born, now) < RULES.minAgeYears) throw new Invalid("underage");
  return born;
}

function checkName(maxChars) {
  return function (value) {
    var name = value.normalize("NFC").split(WS).filter(Boolean).join(" ");
    var length = chars(name);
    if (length < 2) throw new Invalid("too_short");
    if (length > maxChars) throw new Invalid("too_long");
    if (!NAME_RE.test(name)) throw new Invalid("characters");
    return name;
  };
}

function checkEmail(value) {
  if (chars(value) > RULES.emailMaxChars) throw new Invalid("too_long");
  var email = strip(value);
  if (!EMAIL_RE.test(email)) throw new Invalid("email_format");
  var at = email.lastIndexOf("@");
  return email.slice(0, at) + "@" + email.slice(at + 1).toLowerCase();
}

function checkPhone(value) {
  var phone = strip(value);
  for (var i = 0; i < RULES.phoneSeparators.length; i++) {
    phone = phone.split(RULES.phoneSeparators[i]).join("");
  }
  if (!PHONE_RE.test(phone)) throw new Invalid("phone_format");
  return "+62" + phone.slice(phone.indexOf("8"));
}

var CHECKS = [
  ["nik", checkNik],
  ["birth_date", null],
  ["full_name", checkName(RULES.nameMaxChars)],
  ["birth_place", checkName(RULES.placeMaxChars)],
  ["email", checkEmail],
  ["phone", checkPhone],
];

// The verdict on a decoded body, on the day `today` (YYYY-MM-DD, in WIB): {errors: [{field,
// code}], value: the normalised registration or null}.
function validateRegistration(body, today) {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    return { errors: [{ field: "", code: "type" }], value: null };
  }
  var errors = [];
  var keys = Object.keys(body);
  var known = keys.filter(function (key) { return RULES.fields.indexOf(key) >= 0; });
  if (!(keys.length === RULES.fields.length && known.length === keys.length)) {
    keys.forEach(function (key) {
      if (RULES.fields.indexOf(key) < 0) errors.push({ field: key, code: "unknown" });
    });
  }
  var raw = {};
  RULES.fields.forEach(function (name) {
    var value = Object.prototype.hasOwnProperty.call(body, name) ? body[name] : null;
    if (value === null || value === undefined) errors.push({ field: name, code: "required" });
    else if (typeof value !== "string") errors.push({ field: name, code: "type" });
    else raw[name] = value;
  });
  var value = {};
  CHECKS.forEach(function (pair) {
    var name = pair[0];
    if (!(name in raw)) return;
    try {
      value[name] = name === "birth_date" ? checkBirthDate(raw[name], today) : pair[1](raw[name]);
    } catch (error) {
      if (!(error instanceof Invalid)) throw error;
      errors.push({ field: name, code: error.code });
    }
  });
  if (value.nik !== undefined && value.birth_date !== undefined) {
    var dayMonth = nikBirthDayMonth(value.nik);
    var born = value.birth_date;
    if (!(dayMonth[0] === born[2] && dayMonth[1] === born[1] &&
          Number(value.nik.slice(10, 12)) === born[0] % 100)) {
      errors.push({ field: "nik", code: "nik_birth_date_mismatch" });
    }
  }
  if (errors.length) return { errors: errors, value: null };
  value.birth_date = isoDay(value.birth_date[0], value.birth_date[1], value.birth_date[2]);
  return { errors: [], value: value };
}

// Today in Jakarta (WIB, UTC+7), which decides a registrant's age, as YYYY-MM-DD.
function todayWib(nowMs) {
  var wib = new Date(nowMs + 7 * 3600 * 1000);
  return isoDay(wib.getUTCFullYear(), wib.getUTCMonth() + 1, wib.getUTCDate());
}
