// hello-js: an Updraft HTTP function in JavaScript, built with
// componentize-js into a wasi:http/proxy component. The fetch-event style
// handler is StarlingMonkey's: every request gets a plain-text greeting.
addEventListener('fetch', (event) => {
  event.respondWith(
    new Response('Hello from Updraft (JavaScript)!\n', {
      status: 200,
      headers: { 'content-type': 'text/plain' },
    }),
  );
});
