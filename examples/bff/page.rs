//! The pages: plain HTML and CSS with a small script, no build step. The
//! waiting page is rendered with the visitor's place already in it, so it
//! reads right before (and without) the script.

use serde_json::Value;

/// What operators may change (`--title`, `--accent`, `--logo`).
pub struct Look {
    pub title: String,
    pub accent: String,
    pub logo: Option<String>,
    /// How often the page's event stream says it is alive: the page takes
    /// a stream silent for two of these and a second as lost.
    pub alive_ms: u64,
}

/// Escapes text for HTML.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// A page of the site: `page` names it in the tab's title before the
/// site's name (none for the waiting page, whose script names its states).
fn layout(look: &Look, page: &str, head_extra: &str, body_attrs: &str, main: &str) -> String {
    let logo = look
        .logo
        .as_deref()
        .map(|src| format!(r#"<img class="logo" src="{}" alt="">"#, escape(src)))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>{tab}</title>
<link rel="stylesheet" href="/static/app.css">
<style>{accent_style}</style>
{head_extra}
</head>
<body {body_attrs}>
<header>{logo}<span class="site">{title}</span></header>
<main>
{main}
</main>
</body>
</html>
"#,
        title = escape(&look.title),
        tab = match page {
            "" => escape(&look.title),
            page => format!("{} · {}", escape(page), escape(&look.title)),
        },
        accent_style = accent_style(look),
    )
}

/// The one inline style of every page: the accent colour. Its digest goes
/// in the pages' Content-Security-Policy, so no other inline style runs.
pub fn accent_style(look: &Look) -> String {
    format!(":root {{ --accent: {}; }}", escape(&look.accent))
}

/// CSS Color Module Level 4's named colours.
const NAMED_COLOURS: [&str; 148] = [
    "aliceblue",
    "antiquewhite",
    "aqua",
    "aquamarine",
    "azure",
    "beige",
    "bisque",
    "black",
    "blanchedalmond",
    "blue",
    "blueviolet",
    "brown",
    "burlywood",
    "cadetblue",
    "chartreuse",
    "chocolate",
    "coral",
    "cornflowerblue",
    "cornsilk",
    "crimson",
    "cyan",
    "darkblue",
    "darkcyan",
    "darkgoldenrod",
    "darkgray",
    "darkgreen",
    "darkgrey",
    "darkkhaki",
    "darkmagenta",
    "darkolivegreen",
    "darkorange",
    "darkorchid",
    "darkred",
    "darksalmon",
    "darkseagreen",
    "darkslateblue",
    "darkslategray",
    "darkslategrey",
    "darkturquoise",
    "darkviolet",
    "deeppink",
    "deepskyblue",
    "dimgray",
    "dimgrey",
    "dodgerblue",
    "firebrick",
    "floralwhite",
    "forestgreen",
    "fuchsia",
    "gainsboro",
    "ghostwhite",
    "gold",
    "goldenrod",
    "gray",
    "green",
    "greenyellow",
    "grey",
    "honeydew",
    "hotpink",
    "indianred",
    "indigo",
    "ivory",
    "khaki",
    "lavender",
    "lavenderblush",
    "lawngreen",
    "lemonchiffon",
    "lightblue",
    "lightcoral",
    "lightcyan",
    "lightgoldenrodyellow",
    "lightgray",
    "lightgreen",
    "lightgrey",
    "lightpink",
    "lightsalmon",
    "lightseagreen",
    "lightskyblue",
    "lightslategray",
    "lightslategrey",
    "lightsteelblue",
    "lightyellow",
    "lime",
    "limegreen",
    "linen",
    "magenta",
    "maroon",
    "mediumaquamarine",
    "mediumblue",
    "mediumorchid",
    "mediumpurple",
    "mediumseagreen",
    "mediumslateblue",
    "mediumspringgreen",
    "mediumturquoise",
    "mediumvioletred",
    "midnightblue",
    "mintcream",
    "mistyrose",
    "moccasin",
    "navajowhite",
    "navy",
    "oldlace",
    "olive",
    "olivedrab",
    "orange",
    "orangered",
    "orchid",
    "palegoldenrod",
    "palegreen",
    "paleturquoise",
    "palevioletred",
    "papayawhip",
    "peachpuff",
    "peru",
    "pink",
    "plum",
    "powderblue",
    "purple",
    "rebeccapurple",
    "red",
    "rosybrown",
    "royalblue",
    "saddlebrown",
    "salmon",
    "sandybrown",
    "seagreen",
    "seashell",
    "sienna",
    "silver",
    "skyblue",
    "slateblue",
    "slategray",
    "slategrey",
    "snow",
    "springgreen",
    "steelblue",
    "tan",
    "teal",
    "thistle",
    "tomato",
    "turquoise",
    "violet",
    "wheat",
    "white",
    "whitesmoke",
    "yellow",
    "yellowgreen",
];

/// An accent as `--accent` takes it: a CSS colour (`#4f46e5`, `#fff`,
/// `rgb(79 70 229)`, `hsl(243deg 75% 59% / 90%)`, `rebeccapurple`), nothing
/// that could close the style rule it is put in.
pub fn css_colour(value: &str) -> Result<String, String> {
    let hex = value.strip_prefix('#').is_some_and(|h| {
        [3, 4, 6, 8].contains(&h.len()) && h.chars().all(|c| c.is_ascii_hexdigit())
    });
    let named = NAMED_COLOURS.contains(&value);
    let function = ["rgb(", "rgba(", "hsl(", "hsla(", "oklch(", "oklab("]
        .iter()
        .find_map(|f| value.strip_prefix(f))
        .and_then(|rest| rest.strip_suffix(')'))
        .is_some_and(|args| {
            !args.is_empty()
                && args.len() <= 60
                && args
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || " .,%/+-".contains(c))
        });
    if hex || named || function {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a CSS colour: use #rgb, #rrggbb (with alpha: #rgba, #rrggbbaa), rgb(), hsl(), oklch() or a colour name"
        ))
    }
}

/// Minutes in words, as the page's script says them.
pub fn wait_words(seconds: Option<u64>) -> String {
    match seconds {
        None => "calculating".into(),
        Some(s) if s < 60 => "less than a minute".into(),
        Some(s) => match (s + 30) / 60 {
            1 => "about 1 minute".into(),
            m => format!("about {m} minutes"),
        },
    }
}

/// The waiting page, showing `view` (the JSON the events carry).
pub fn waiting(look: &Look, view: &Value) -> String {
    let state = view["state"].as_str().unwrap_or("waiting");
    let number = |key: &str| view[key].as_u64().unwrap_or(0);
    let (position, ahead, waiting) = (number("position"), number("ahead"), number("waiting"));
    let paused = view["mode"] == "paused";
    let opens_in = number("opens_in_s");
    let notice = view["notice"].as_str().unwrap_or("");
    let closed_reason = view["closed_reason"].as_str().unwrap_or("");
    let (closed_title, closed_words) = closing(closed_reason);
    let (heading, hint) = state_words(state, paused, closed_reason);
    let estimate = estimate_words(
        view["wait_s"].as_u64(),
        view["wait_low_s"].as_u64(),
        view["wait_high_s"].as_u64(),
        paused,
    );
    let status = match state {
        "closed" => closed_words.to_owned(),
        "pre_queue" => "You are in the waiting room.".to_owned(),
        _ => format!("You are number {position} in line."),
    };
    let main = format!(
        r#"<h1 id="heading">{heading}</h1>
<p id="status" class="status">{status}</p>
<p id="announce" class="visually-hidden" aria-live="polite"></p>
<p id="reconnecting" class="notice" role="status" hidden>Reconnecting… You keep your place. <span id="confirmed"></span></p>
<p id="notice" class="notice" aria-live="polite" {hide_notice}>{notice}</p>
<section id="waiting" class="card" {hide_waiting}>
  <div class="figures">
    <div><span class="label">Your place</span><span id="position" class="big">{position}</span></div>
    <div><span class="label">People ahead of you</span><span id="ahead" class="big">{ahead}</span></div>
  </div>
  <progress id="progress" max="100" value="0" aria-label="Progress to the front of the line"></progress>
  <p><span id="waiting-count">{waiting}</span> people are waiting.</p>
  <p><span class="label">Expected entry</span> <strong id="estimate">{estimate}</strong></p>
</section>
<section id="prequeue" class="card" {hide_prequeue}>
  <p class="label">The sale opens in</p>
  <p id="countdown" class="big" data-opens-in="{opens_in}">{countdown}</p>
  <p>Arriving any time before the opening gives you the same chance.</p>
</section>
<section id="closed" class="card" {hide_closed}>
  <p id="closed-title" class="big small">{closed_title}</p>
  <p>Thank you for waiting. <a href="/">Back to the start</a></p>
</section>
<p id="hint" class="hint">{hint}</p>
<p class="hint"><span id="updated"></span> <button id="notify" type="button" hidden>Tell me when it is my turn</button></p>
<noscript><p class="hint">This page updates itself every 10 seconds.</p></noscript>
<script src="/static/app.js" defer></script>"#,
        hide_waiting = hidden(state != "waiting"),
        hide_prequeue = hidden(state != "pre_queue"),
        hide_closed = hidden(state != "closed"),
        hide_notice = hidden(notice.is_empty()),
        notice = escape(notice),
        countdown = clock(opens_in),
    );
    layout(
        look,
        "",
        r#"<noscript><meta http-equiv="refresh" content="10"></noscript>"#,
        &format!(
            r#"data-state="{}" data-ticket="{}" data-transport="none" data-connection="live" data-alive-ms="{}""#,
            escape(state),
            number("ticket"),
            look.alive_ms
        ),
        &main,
    )
}

/// A state's heading and what to do next, as the page's script says them.
fn state_words(state: &str, paused: bool, closed_reason: &str) -> (&'static str, &'static str) {
    match state {
        "closed" => (
            closing(closed_reason).0,
            "The line has closed, so there is nothing more to wait for here.",
        ),
        "pre_queue" => (
            "The sale opens soon",
            "Keep this tab open. When the sale opens, everyone here gets a random place in line.",
        ),
        _ if paused => (
            "Admission is paused",
            "You keep your place. Keep this tab open: the line moves again when admission resumes.",
        ),
        _ => (
            "You are in line",
            "Keep this tab open. When it is your turn you are taken to the booking page. Refreshing this page keeps your place.",
        ),
    }
}

/// The expected entry in words, without the visitor's clock (the script
/// shows clock times).
pub fn estimate_words(
    wait_s: Option<u64>,
    low_s: Option<u64>,
    high_s: Option<u64>,
    paused: bool,
) -> String {
    if paused {
        return "when admission resumes".into();
    }
    let Some(wait) = wait_s else {
        return "the line moves when the organiser lets people in".into();
    };
    let span = |s: u64| match s {
        0..60 => "less than a minute".to_owned(),
        s => format!("{} minutes", (s + 30) / 60),
    };
    match (low_s, high_s) {
        (Some(low), Some(high)) if high > low + 30 => {
            format!(
                "in about {} (between {} and {})",
                span(wait),
                span(low),
                span(high)
            )
        }
        _ => format!("in about {}", span(wait)),
    }
}

/// The words for a closed queue's reason. The service sends a code; an
/// operator's own code gets the general words, and the notice says more.
fn closing(reason: &str) -> (&'static str, &'static str) {
    match reason {
        "CANCELLED" => ("Cancelled", "This sale has been cancelled."),
        "SOLD_OUT" | "" => ("Sold out", "Sold out: this sale has ended."),
        _ => ("Closed", "This sale has ended."),
    }
}

fn hidden(hide: bool) -> &'static str {
    if hide { "hidden" } else { "" }
}

fn clock(seconds: u64) -> String {
    format!(
        "{}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// A page with a heading and a paragraph, and a way on: back to the
/// start, which is the waiting page.
pub fn message(look: &Look, heading: &str, text: &str, refresh_s: Option<u32>) -> String {
    let head = refresh_s
        .map(|s| format!(r#"<meta http-equiv="refresh" content="{s}">"#))
        .unwrap_or_default();
    layout(
        look,
        heading,
        &head,
        r#"data-state="message""#,
        &format!(
            r#"<h1 id="heading">{}</h1><p class="status" aria-live="polite">{}</p><p><a href="/">Back to the start</a></p>"#,
            escape(heading),
            escape(text)
        ),
    )
}

/// The check before joining: the check's own fields (a widget, a proof of
/// work the page's script solves) in a form posted to `/human`.
pub fn challenge(look: &Look, fields: &str, failed: bool) -> String {
    let again = match failed {
        true => {
            r#"<p class="notice" id="challenge-failed">That check did not succeed. Please try again.</p>"#
        }
        false => "",
    };
    layout(
        look,
        "One moment",
        "",
        r#"data-state="challenge""#,
        &format!(
            r#"<h1>One moment</h1>
{again}<p class="status" id="status">Before you join the line, we check that you are not a robot. This takes a moment.</p>
<form method="post" action="/human" id="human-form">{fields}<button id="human" type="submit">Continue</button></form>
<noscript><p class="hint">This check needs JavaScript.</p></noscript>
<script src="/static/app.js" defer></script>"#
        ),
    )
}

/// The stand-in booking page, for an admitted visitor.
pub fn booking(look: &Look, visitor: &str, expires_in_s: u64, attempt: &str) -> String {
    layout(
        look,
        "It's your turn",
        "",
        r#"data-state="booking""#,
        &format!(
            r#"<h1>It's your turn</h1>
<p class="status" aria-live="polite">You have {} to complete your purchase.</p>
<section class="card"><p>Booking for visitor <code>{}</code>.</p>
<form method="post" action="/booking/purchase"><input type="hidden" name="attempt" value="{}"><button id="buy" type="submit">Complete purchase</button></form></section>"#,
            wait_words(Some(expires_in_s)),
            escape(visitor),
            escape(attempt)
        ),
    )
}

pub const CSS: &str = r#"
:root { --bg: #f7f7f9; --fg: #1b1b1f; --card: #fff; --muted: #5b5b66; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #121216; --fg: #ececf1; --card: #1d1d24; --muted: #a4a4b2; }
}
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; background: var(--bg); color: var(--fg); }
header { display: flex; align-items: center; gap: .75rem; padding: 1rem 1.25rem; border-bottom: 4px solid var(--accent); }
header .logo { height: 2rem; }
header .site { font-weight: 600; }
main { max-width: 40rem; margin: 0 auto; padding: 1.5rem 1.25rem 3rem; }
h1 { font-size: 1.6rem; margin: .5rem 0 1rem; }
.status { font-size: 1.1rem; }
.card { background: var(--card); border-radius: 12px; padding: 1.25rem; margin: 1rem 0; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
.figures { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.label { display: block; color: var(--muted); font-size: .9rem; }
.big { display: block; font-size: 3rem; font-weight: 700; line-height: 1.1; font-variant-numeric: tabular-nums; }
.big.small { font-size: 2rem; }
progress { width: 100%; height: .75rem; margin: 1rem 0 .5rem; accent-color: var(--accent); }
.notice { border-left: 4px solid var(--accent); padding-left: .75rem; }
.hint { color: var(--muted); font-size: .95rem; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
a { color: var(--accent); }
body[data-connection="reconnecting"] #waiting { opacity: .6; }
button { font: inherit; font-weight: 600; padding: .75rem 1.5rem; border: 0; border-radius: 8px; background: var(--accent); color: #fff; cursor: pointer; }
@media (max-width: 26rem) { .big { font-size: 2.25rem; } .figures { grid-template-columns: 1fr; } }
"#;

pub const JS: &str = r#"
(() => {
  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const title = document.title;
  let first = 0, countdown = null, source = null, polling = false, failures = 0;
  let said = '', announced = '', entry = null, ticker = null, confirmedAt = 0;

  const time = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const seconds = (ms) => new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  const clock = (s) => `${Math.floor(s / 3600)}:${String(Math.floor(s / 60) % 60).padStart(2, '0')}:${String(s % 60).padStart(2, '0')}`;
  // Under ten minutes in steps of ten seconds, so the figure moves while
  // the page is open, not once a minute.
  const left = (s) => s < 60 ? 'less than a minute'
    : s < 600 ? `about ${Math.floor(s / 60)} min ${String(Math.round((s % 60) / 10) * 10).padStart(2, '0')} s`
    : `about ${Math.round(s / 60)} minutes`;
  const closing = (reason) => reason === 'CANCELLED' ? ['Cancelled', 'This sale has been cancelled.']
    : (reason === 'SOLD_OUT' || !reason) ? ['Sold out', 'Sold out: this sale has ended.']
    : ['Closed', 'This sale has ended.'];
  const words = (p) => p.state === 'closed'
    ? [closing(p.closed_reason)[0], 'The line has closed, so there is nothing more to wait for here.']
    : p.state === 'pre_queue'
      ? ['The sale opens soon', 'Keep this tab open. When the sale opens, everyone here gets a random place in line.']
      : p.mode === 'paused'
        ? ['Admission is paused', 'You keep your place. Keep this tab open: the line moves again when admission resumes.']
        : ['You are in line', 'Keep this tab open. When it is your turn you are taken to the booking page. Refreshing this page keeps your place.'];
  const show = (id) => ['waiting', 'prequeue', 'closed'].forEach((s) => { $(s).hidden = s !== id; });
  const say = (text) => { if (text !== said) { said = text; $('status').textContent = text; } };
  // Read out only what matters: a change of state, and every tenth place.
  const announce = (text) => { if (text !== announced) { announced = text; $('announce').textContent = text; } };
  const stop = () => { if (source) source.close(); source = null; };

  function estimate() {
    if (!entry) return;
    const now = Date.now();
    const s = Math.max(0, Math.round((entry.at - now) / 1000));
    const range = entry.high - entry.low > 30000 ? ` (between ${time(entry.low)} and ${time(entry.high)})` : '';
    $('estimate').textContent = `around ${time(entry.at)}${range}, ${left(s)} from now`;
  }

  function tick(opensIn) {
    clearInterval(countdown);
    const until = Date.now() + opensIn * 1000;
    const step = () => {
      const left = Math.max(0, Math.round((until - Date.now()) / 1000));
      $('countdown').textContent = left > 0 ? clock(left) : 'Opening: drawing places…';
    };
    step();
    countdown = setInterval(step, 1000);
  }

  // The place was confirmed just now: the page is live.
  function confirmed() {
    confirmedAt = Date.now();
    body.dataset.connection = 'live';
    $('reconnecting').hidden = true;
    $('updated').textContent = `Last updated ${seconds(confirmedAt)}.`;
  }

  // The page lost its link to the line: it says so, calmly, and keeps
  // trying.
  function reconnecting() {
    if (body.dataset.connection === 'reconnecting') return;
    body.dataset.connection = 'reconnecting';
    $('confirmed').textContent = confirmedAt ? `Your place was last confirmed at ${seconds(confirmedAt)}.` : '';
    $('reconnecting').hidden = false;
    announce('Reconnecting. You keep your place.');
  }

  function yourTurn() {
    document.title = `It's your turn · ${title}`;
    if ('Notification' in window && Notification.permission === 'granted') {
      try { new Notification("It's your turn", { body: 'Taking you to the booking page.' }); } catch (e) { /* not allowed here */ }
    }
  }

  function render(p) {
    confirmed();
    body.dataset.state = p.state;
    body.dataset.ticket = p.ticket;
    if (p.state === 'admitted') {
      stop();
      $('heading').textContent = "It's your turn";
      say("It's your turn! Taking you to the booking page…");
      announce("It's your turn.");
      yourTurn();
      location.assign('/admit');
      return;
    }
    if (p.state === 'gone') { stop(); location.assign('/wait'); return; }
    const [heading, hint] = words(p);
    $('heading').textContent = heading;
    $('hint').textContent = hint;
    $('notice').textContent = p.notice || '';
    $('notice').hidden = !p.notice;
    if (p.state === 'closed') {
      stop();
      show('closed');
      const [title, text] = closing(p.closed_reason);
      $('closed-title').textContent = title;
      say(text);
      announce(text);
      return;
    }
    if (p.state === 'pre_queue') {
      show('prequeue');
      tick(p.opens_in_s);
      say('You are in the waiting room.');
      announce('The sale opens soon.');
      return;
    }
    clearInterval(countdown);
    show('waiting');
    $('position').textContent = p.position.toLocaleString();
    $('ahead').textContent = p.ahead.toLocaleString();
    $('waiting-count').textContent = p.waiting.toLocaleString();
    const now = Date.now();
    if (p.mode === 'paused') {
      entry = null;
      $('estimate').textContent = 'when admission resumes';
    } else if (p.wait_s == null) {
      entry = null;
      $('estimate').textContent = 'the line moves when the organiser lets people in';
    } else {
      entry = { at: now + p.wait_s * 1000, low: now + (p.wait_low_s ?? p.wait_s) * 1000, high: now + (p.wait_high_s ?? p.wait_s) * 1000 };
      estimate();
      if (!ticker) ticker = setInterval(estimate, 1000);
    }
    // Progress from the place held when this visitor first saw the line.
    const key = `wr-first-${p.ticket}`;
    first = Number(localStorage.getItem(key) || 0);
    if (!first || p.position > first) { first = p.position; localStorage.setItem(key, String(first)); }
    $('progress').value = first > 1 ? Math.round(100 * (first - p.position) / (first - 1)) : 100;
    say(p.mode === 'paused' ? `You are number ${p.position} in line. Admission is paused.` : `You are number ${p.position} in line.`);
    const tens = p.position <= 10 ? p.position : Math.ceil(p.position / 10) * 10;
    announce(p.mode === 'paused' ? 'Admission is paused. You keep your place.'
      : p.position <= 10 ? `You are number ${p.position} in line.` : `Fewer than ${tens} people are ahead of you.`);
  }

  function poll() {
    polling = true;
    body.dataset.transport = 'polling';
    fetch('/status', { cache: 'no-store', credentials: 'same-origin' })
      .then((r) => r.json())
      .then((p) => {
        if (p.retry) { reconnecting(); setTimeout(poll, p.poll_ms || 3000); return; }
        render(p);
        if (p.state === 'waiting' || p.state === 'pre_queue') setTimeout(poll, p.poll_ms || 2000);
      })
      .catch(() => { reconnecting(); setTimeout(poll, 5000); });
  }

  // A stream that goes silent without an error (a proxy or a link that
  // hangs) is taken as lost after two of its keepalives: the page says so
  // and opens another.
  let watchdog = null;
  function heard() {
    clearTimeout(watchdog);
    watchdog = setTimeout(() => { if (source) { reconnecting(); stop(); listen(); } },
      2 * Number(body.dataset.aliveMs || 15000) + 1000);
  }

  function listen() {
    body.dataset.transport = 'events';
    source = new EventSource('/events');
    heard();
    source.addEventListener('place', (e) => { failures = 0; heard(); render(JSON.parse(e.data)); });
    source.addEventListener('alive', heard);
    source.addEventListener('reconnecting', (e) => { heard(); reconnecting(e); });
    source.onerror = () => {
      failures += 1;
      reconnecting();
      // Refused for good (the browser gave up), or failing again and again:
      // the page polls instead.
      if (source && (source.readyState === EventSource.CLOSED || failures >= 3) && !polling) { stop(); poll(); }
    };
  }

  // Asked for, never forced: a notification when it is this visitor's turn.
  function offerNotification() {
    const button = $('notify');
    if (!button || !('Notification' in window) || Notification.permission !== 'default') return;
    button.hidden = false;
    button.addEventListener('click', () => {
      Notification.requestPermission().finally(() => { button.hidden = true; });
    });
  }

  // The proof of work of the check before joining: an answer whose
  // SHA-256 with the challenge starts with the asked zero bits, then the
  // form goes by itself.
  async function solve(form) {
    const challenge = form.elements.challenge;
    if (!challenge) return;
    const button = $('human');
    button.disabled = true;
    if (!(window.crypto && crypto.subtle)) { say('This check needs a secure (https) page.'); return; }
    const bits = Number(challenge.dataset.bits);
    const zeros = (bytes) => {
      let n = 0;
      for (const b of bytes) { if (b === 0) { n += 8; continue; } n += Math.clz32(b) - 24; break; }
      return n;
    };
    const text = new TextEncoder();
    for (let start = 0; ; start += 256) {
      const tries = [];
      for (let n = start; n < start + 256; n++) {
        tries.push(crypto.subtle.digest('SHA-256', text.encode(`${challenge.value}:${n}`)).then((d) => [n, d]));
      }
      for (const [n, digest] of await Promise.all(tries)) {
        if (zeros(new Uint8Array(digest)) >= bits) {
          form.elements.answer.value = String(n);
          form.submit();
          return;
        }
      }
    }
  }

  if (body.dataset.state === 'challenge') { solve($('human-form')); return; }
  if (body.dataset.state === 'closed') return;
  confirmed();
  offerNotification();
  if ('EventSource' in window) listen(); else poll();
})();
"#;
