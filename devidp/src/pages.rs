//! The provider's HTML: a login form and an error page. Small, self-contained (no external
//! assets, inline style only) and marked as development-only on every page.

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;background:#f4f4f4;color:#111;line-height:1.5}\
.banner{background:#8a1c00;color:#fff;padding:.6em 1em;font-weight:bold}\
main{max-width:28em;margin:2em auto;background:#fff;padding:1.5em 2em;border-radius:6px;border:1px solid #ccc}\
h1{font-size:1.4em;margin-top:0}\
label{display:block;margin-top:1em;font-weight:bold}\
input[type=text],input[type=password]{width:100%;box-sizing:border-box;font-size:1.1em;padding:.4em;border:1px solid #555;border-radius:4px}\
input:focus,button:focus{outline:3px solid #1d70b8;outline-offset:1px}\
.actions{margin-top:1.5em;display:flex;gap:1em}\
button{font-size:1.1em;padding:.4em 1.2em;border-radius:4px;border:1px solid #111;background:#00703c;color:#fff;cursor:pointer}\
button.secondary{background:#fff;color:#111}\
.error{border-left:5px solid #d4351c;padding:.4em .8em;background:#fde8e6;margin:1em 0}\
.hint{color:#444;font-size:.95em}";

/// The banner every page carries.
pub const BANNER: &str =
    "Development identity provider \u{2014} demo users only. Not for production: \
     it runs over plain HTTP on this computer and has no real accounts.";

fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"robots\" content=\"noindex\">\n\
         <title>{title} \u{2014} Postern development identity provider</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n\
         <div class=\"banner\" role=\"note\">{BANNER}</div>\n<main>\n{body}\n</main>\n</body>\n</html>\n",
        title = escape(title),
        body = body,
    )
}

/// One demo account as listed on the login page (never its password).
pub struct UserHint<'a> {
    pub username: &'a str,
    pub groups: &'a [String],
    pub mfa: bool,
}

pub struct LoginPage<'a> {
    /// Identifies the pending authorization request; the only state the form carries.
    pub request_id: &'a str,
    pub client_id: &'a str,
    pub username: &'a str,
    pub error: Option<&'a str>,
    pub users: Vec<UserHint<'a>>,
}

pub fn login(p: &LoginPage<'_>) -> String {
    let error = match p.error {
        Some(e) => format!(
            "<div class=\"error\" role=\"alert\" id=\"login-error\">{}</div>\n",
            escape(e)
        ),
        None => String::new(),
    };
    let described = if p.error.is_some() {
        " aria-describedby=\"login-error\" aria-invalid=\"true\""
    } else {
        ""
    };
    let mut users = String::new();
    for u in &p.users {
        let groups = if u.groups.is_empty() {
            "no groups".to_owned()
        } else {
            u.groups.join(", ")
        };
        users.push_str(&format!(
            "<li><strong>{}</strong> \u{2014} {}{}</li>",
            escape(u.username),
            escape(&groups),
            if u.mfa { ", signs in with MFA" } else { "" }
        ));
    }
    let body = format!(
        "<h1>Sign in</h1>\n\
         <p>The application <strong>{client}</strong> asks who you are.</p>\n\
         {error}\
         <form method=\"post\" action=\"/login\">\n\
         <input type=\"hidden\" name=\"request_id\" value=\"{rid}\">\n\
         <label for=\"username\">Username</label>\n\
         <input type=\"text\" id=\"username\" name=\"username\" value=\"{username}\" \
         autocomplete=\"username\" autocapitalize=\"none\" spellcheck=\"false\" required autofocus{described}>\n\
         <label for=\"password\">Password</label>\n\
         <input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required{described}>\n\
         <div class=\"actions\">\n\
         <button type=\"submit\" name=\"action\" value=\"login\">Sign in</button>\n\
         <button type=\"submit\" name=\"action\" value=\"cancel\" class=\"secondary\" formnovalidate>Cancel</button>\n\
         </div>\n</form>\n\
         <h2 class=\"hint\">Demo users</h2>\n<ul class=\"hint\">{users}</ul>",
        client = escape(p.client_id),
        rid = escape(p.request_id),
        username = escape(p.username),
    );
    document("Sign in", &body)
}

/// An error: what went wrong, and what to do next.
pub fn error(title: &str, text: &str) -> String {
    message(
        title,
        text,
        Some("Go back to the application and start signing in again."),
    )
}

/// A page with a heading, one paragraph and an optional hint.
pub fn message(title: &str, text: &str, hint: Option<&str>) -> String {
    let hint = hint
        .map(|h| format!("\n<p class=\"hint\">{}</p>", escape(h)))
        .unwrap_or_default();
    let body = format!("<h1>{}</h1>\n<p>{}</p>{hint}", escape(title), escape(text));
    document(title, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_everything_that_matters() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn login_page_is_labelled_escaped_and_marked_development() {
        let groups = vec!["radiologists".to_owned()];
        let html = login(&LoginPage {
            request_id: "r\"id",
            client_id: "<gw>",
            username: "x\"><script>",
            error: Some("Wrong username or password"),
            users: vec![UserHint {
                username: "alice",
                groups: &groups,
                mfa: true,
            }],
        });
        assert!(html.contains(BANNER));
        assert!(html.contains("<html lang=\"en\">"));
        assert!(html.contains("<label for=\"username\">"));
        assert!(html.contains("<label for=\"password\">"));
        assert!(html.contains("value=\"r&quot;id\""));
        assert!(html.contains("&lt;gw&gt;"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("role=\"alert\""));
        assert!(html.contains("alice"));
        assert!(!html.contains("src="), "no external assets");
    }
}
