// The page's number fields: a decimal point or a decimal comma ("0,5" is 0.5, as many keyboards type it), checked
// as typed, with a visible message under a field that cannot be read; an empty field means "not given".

const NUMBER = /^\+?(\d+([.,]\d*)?|[.,]\d+)([eE][-+]?\d+)?$/;

// `input`: a text field; `error`: the element that shows what is wrong; `what`: the field, for the message.
// `zeroOk`: whether 0 is allowed (a minimum length may be 0; a pixel size may not).
export function decimalField(input, error, what, zeroOk = false) {
  const read = () => {
    const text = input.value.trim();
    if (text === "") return { ok: true, value: null };
    if (!NUMBER.test(text)) return { ok: false };
    const value = Number(text.replace(",", "."));
    return Number.isFinite(value) && (value > 0 || (zeroOk && value === 0)) ? { ok: true, value } : { ok: false };
  };
  const limit = zeroOk ? "0 or more" : "above 0";
  return {
    value: () => (read().ok ? read().value : null),
    check() {
      const { ok } = read();
      input.setAttribute("aria-invalid", String(!ok));
      error.textContent = ok ? "" : `${what} must be a number ${limit}, such as 0.5 or 0,5, or empty.`;
      error.hidden = ok;
      return ok;
    },
  };
}

// A random name for an upload's progress: crypto.randomUUID needs HTTPS, getRandomValues does not.
export function randomToken() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}
