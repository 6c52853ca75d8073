//! The device page shown after the identity provider's callback: it runs the WebAuthn
//! ceremony in the browser and posts the posture report with it.

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::Full;
use postern_proto::confirm::ConfirmCode;
use postern_proto::posture::PostureReport;

use super::ceremony::{b64, CEREMONY_TTL, COOKIE};
use crate::authn::oidc::Identity;
use crate::http::{pages, Resp};

/// The device page shown after the IdP callback. For a sign-in `postern login` started, `code`
/// is the confirmation code it printed: the page shows it and starts nothing (no assertion, no
/// registration) until the person clicks "Confirm sign-in for code …"; the begin requests then
/// carry the code, and the gateway compares it with the one kept with the ceremony.
pub fn page(
    devices: &crate::authn::device_table::DeviceTable,
    identity: &Identity,
    ceremony: &str,
    posture: Option<&PostureReport>,
    code: Option<&ConfirmCode>,
) -> Resp {
    let has_devices = devices.has_devices(&identity.user);
    let nonce = postern_proto::ids::random_bytes(16)
        .map(|b| b64(&b))
        .unwrap_or_else(|_| "n".into());
    let posture_json = match posture {
        Some(p) => String::from_utf8_lossy(&p.canonical()).into_owned(),
        None => "null".into(),
    };
    // JSON inside <script type="application/json">: only '<' could end the element early.
    let posture_json = posture_json.replace('<', "\\u003c");
    let shown = posture
        .map(|p| {
            let f = p.policy_facts();
            format!(
                "<p class=\"small\">This laptop reports: {} {} — disk encryption {}, firewall {}, screen lock {}.</p>",
                pages::escape(&p.os_name),
                pages::escape(&p.os_version),
                pages::escape(&f["disk_encrypted"]),
                pages::escape(&f["firewall"]),
                pages::escape(&f["screen_lock"]),
            )
        })
        .unwrap_or_default();
    // Until a CLI sign-in is confirmed, the retry button and the registration form are hidden.
    let (state, gated, confirm) = match code {
        Some(c) => (
            "confirm",
            " hidden",
            format!(
                r#"<section id="confirm-box"><div class="box"><p>When you ran <code>postern login</code>, your terminal printed a confirmation code. Continue only if it shows this same code:</p>
<p class="code" id="code">{code}</p>
<p class="small">If you did not just run postern login on this computer, or the code is different, close this window: someone else may be trying to use your sign-in.</p></div>
<p><button id="confirm" type="button">Confirm sign-in for code {code}</button></p></section>"#,
                code = pages::escape(c.as_str()),
            ),
        ),
        None => ("start", "", String::new()),
    };
    let html = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><title>Confirm your device — Postern</title><style>{style}</style></head>
<body data-state="{state}" data-has-devices="{has_devices}"><main>
<h1>Confirm your device</h1>
<p>Signed in at the hospital as <strong id="user">{user}</strong>. To finish, this laptop proves it is a registered device (you may be asked for your PIN, fingerprint or face).</p>
{shown}
{confirm}
<div class="box"><p id="status" role="status" aria-live="polite">Starting…</p></div>
<div class="box err" id="error" role="alert" hidden></div>
<p id="retry-row"{gated}><button id="retry" type="button">Try again</button></p>
<section id="register-form"{gated}>
<h2>New laptop?</h2>
<p>Register this laptop as one of your devices. Give it a name you will recognise, such as “home laptop”.</p>
<p><label for="device-name">Device name</label><br><input id="device-name" type="text" maxlength="64" autocomplete="off" placeholder="home laptop"> <button id="register" type="button">Register this device</button></p>
</section>
<input type="hidden" id="ceremony" value="{ceremony}">
<script type="application/json" id="posture">{posture_json}</script>
</main><footer>Postern secure access</footer>
<script nonce="{nonce}">{script}</script></body></html>"#,
        style = STYLE,
        user = pages::escape(&identity.user),
        ceremony = pages::escape(ceremony),
        script = SCRIPT,
    );
    let mut r = Response::new(Full::new(Bytes::from(html)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    pages::harden(&mut r);
    let csp = format!("default-src 'none'; script-src 'nonce-{nonce}'; connect-src 'self'; style-src 'unsafe-inline'; img-src 'none'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'");
    if let Ok(v) = HeaderValue::from_str(&csp) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    let c = format!(
        "{COOKIE}={ceremony}; Path=/auth; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        CEREMONY_TTL.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

const STYLE: &str = "body{font:18px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;color:#1b1b1b;background:#fff}h1{font-size:1.6rem;margin-bottom:.5rem}h2{font-size:1.2rem;margin-top:2rem}.box{border-left:6px solid #005eb8;padding:.5rem 1rem;background:#f0f4f5;margin:1rem 0}.err{border-color:#d5281b}.small{font-size:.9rem;color:#4c6272}.code{font:700 2rem/1.2 ui-monospace,Menlo,Consolas,monospace;letter-spacing:.15em;margin:.5rem 0}button{font:inherit;padding:.3rem .9rem}input{font:inherit;padding:.2rem .4rem}footer{margin-top:3rem;color:#4c6272;font-size:.9rem}";

const SCRIPT: &str = r#"
(function(){
'use strict';
const $=function(id){return document.getElementById(id);};
const enc=function(buf){const b=new Uint8Array(buf);let s='';for(let i=0;i<b.length;i++)s+=String.fromCharCode(b[i]);return btoa(s).replace(/\+/g,'-').replace(/\//g,'_').replace(/=+$/,'');};
const dec=function(s){s=s.replace(/-/g,'+').replace(/_/g,'/');while(s.length%4)s+='=';const r=atob(s);const b=new Uint8Array(r.length);for(let i=0;i<r.length;i++)b[i]=r.charCodeAt(i);return b.buffer;};
const ceremony=$('ceremony').value;
const posture=JSON.parse($('posture').textContent);
const code=$('code')?$('code').textContent:null;
let confirmed=null;
function setState(st,msg){document.body.dataset.state=st;$('status').textContent=msg;}
function showError(code,msg){const e=$('error');e.dataset.code=code;e.textContent=msg;e.hidden=false;document.body.dataset.state='error';}
function clearError(){const e=$('error');e.hidden=true;e.textContent='';delete e.dataset.code;}
async function post(path,body){const r=await fetch(path,{method:'POST',headers:{'content-type':'application/json'},credentials:'same-origin',body:JSON.stringify(body)});let j={};try{j=await r.json();}catch(e){}return {status:r.status,json:j};}
async function assertionBody(){
  const r=await post('/auth/device/assert/begin',{ceremony:ceremony,confirm:confirmed});
  if(r.status!==200)throw r;
  const o=r.json.publicKey;o.challenge=dec(o.challenge);
  (o.allowCredentials||[]).forEach(function(c){c.id=dec(c.id);});
  const c=await navigator.credentials.get({publicKey:o});
  return {ceremony:ceremony,posture:posture,credential:{id:c.id,rawId:enc(c.rawId),type:c.type,extensions:{},response:{authenticatorData:enc(c.response.authenticatorData),clientDataJSON:enc(c.response.clientDataJSON),signature:enc(c.response.signature),userHandle:c.response.userHandle?enc(c.response.userHandle):null}}};
}
async function registrationBody(name){
  const r=await post('/auth/device/register/begin',{ceremony:ceremony,name:name,confirm:confirmed});
  if(r.status!==200)throw r;
  const o=r.json.publicKey;o.challenge=dec(o.challenge);o.user.id=dec(o.user.id);
  (o.excludeCredentials||[]).forEach(function(c){c.id=dec(c.id);});
  const c=await navigator.credentials.create({publicKey:o});
  const t=c.response.getTransports?c.response.getTransports():[];
  return {ceremony:ceremony,posture:posture,credential:{id:c.id,rawId:enc(c.rawId),type:c.type,extensions:{},response:{attestationObject:enc(c.response.attestationObject),clientDataJSON:enc(c.response.clientDataJSON),transports:t}}};
}
function failed(r){
  const j=(r&&r.json)||{};
  if(j.error==='no_devices'){setState('register','No device is registered for you yet. Name this laptop and register it.');$('device-name').focus();return;}
  if(j.error==='device_pending'){setState('pending',(j.message||'This device is waiting for approval.'));waitApproval();return;}
  if(j.error){showError(j.error,(j.message||'Sign-in failed.')+(j.ref?' Reference: '+j.ref:''));return;}
  const name=(r&&r.name)||'Error';
  showError('client_error',name+': '+String((r&&r.message)||r||'the browser could not use this device')+' — if this laptop is not registered yet, register it below.');
}
async function signIn(){
  clearError();setState('assert','Confirm it is you on this device…');
  try{
    const body=await assertionBody();
    const r=await post('/auth/device/assert/finish',body);
    if(r.status===200&&r.json.status==='ok'){setState('done','Signed in. '+(r.json.message||''));if(r.json.redirect)window.location.assign(r.json.redirect);}
    else failed(r);
  }catch(e){failed(e);}
}
async function register(){
  clearError();
  const name=$('device-name').value.trim();
  if(!name){showError('bad_name','Please give this device a name, such as "home laptop".');return;}
  setState('register','Registering "'+name+'"…');
  try{
    const body=await registrationBody(name);
    const r=await post('/auth/device/register/finish',body);
    if(r.status===200&&r.json.status==='active'){setState('assert','Registered "'+name+'". Now confirm it is you…');await signIn();}
    else if(r.status===200&&r.json.status==='pending'){setState('pending',r.json.message);waitApproval();}
    else failed(r);
  }catch(e){failed(e);}
}
let waiting=false;
async function waitApproval(){
  if(waiting)return;waiting=true;
  try{
    for(;;){
      await new Promise(function(ok){setTimeout(ok,3000);});
      const r=await post('/auth/device/wait',{ceremony:ceremony});
      if(r.status===200&&r.json.status==='pending')continue;
      if(r.status===200&&r.json.status==='active'){setState('assert','Approved by your security team. Confirm it is you on this device…');await signIn();return;}
      failed(r);return;
    }
  }finally{waiting=false;}
}
function proceed(){
  if(document.body.dataset.hasDevices==='true'){signIn();}
  else{setState('register','No device is registered for you yet. Name this laptop and register it.');}
}
function confirmCode(){
  confirmed=code;
  $('confirm-box').hidden=true;$('retry-row').hidden=false;$('register-form').hidden=false;
  proceed();
}
$('register').addEventListener('click',register);
$('retry').addEventListener('click',signIn);
window.postern={assertionBody:assertionBody,registrationBody:registrationBody,post:post,signIn:signIn,register:register,ceremony:ceremony,code:code};
if(code){$('confirm').addEventListener('click',confirmCode);setState('confirm','Check the code above, then confirm to continue.');}
else{proceed();}
})();
"#;
