package msgserver_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/golang-jwt/jwt/v5"

	"github.com/chatrelay/chatrelay/msgserver"
	"github.com/chatrelay/chatrelay/store"
	"github.com/chatrelay/chatrelay/testenv"
)

// consoleErrors collects what a page reports as an error: console.error,
// uncaught exceptions, and the browser's own error log entries (a failed
// load, a refused connection, a CSP violation).
type consoleErrors struct {
	mu   sync.Mutex
	errs []string
}

func (c *consoleErrors) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.errs...)
}

func (c *consoleErrors) listen(ctx context.Context, page string) {
	msgs := chromedp.Console(ctx) // subscribed from here on
	go func() {
		for m, err := range msgs {
			if err != nil {
				return // the page's context has ended
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				c.mu.Lock()
				c.errs = append(c.errs, page+": "+m.String()+" "+m.Source+" "+m.URL)
				c.mu.Unlock()
			}
		}
	}()
}

// void makes a for a list of steps, dropping its value.
func void[T any](a chromedp.Action[T]) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := a(ctx, t)
		return err
	})
}

// The chat page in a real browser: two pages on two message servers log in
// with the keyboard, chat both ways through the relay and see each
// message's status; one page leaves, gets a message stored offline, comes
// back and is shown it. Any JavaScript error or failed load fails the test.
// Each page's screenshot is saved in the test's artifact directory
// (go test -artifacts -outputdir DIR keeps it).
func TestBrowserChatPage(t *testing.T) {
	chrome := testenv.Need(t, "chromium", "chromium")
	tr := startTier(t, nil)
	webA, webB := tr.a.ServeWeb(t), tr.b.ServeWeb(t)

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome),
		chromedp.WindowSize(412, 860), // a phone's screen
		chromedp.DisableGPU,
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run its sandbox as root
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctxA, cancelA := chromedp.NewContext(allocCtx)
	t.Cleanup(cancelA)
	var errs consoleErrors
	if err := chromedp.Do(ctxA, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	errs.listen(ctxA, "page A")
	ctxB, cancelB := chromedp.NewContext(ctxA) // a second tab in the same browser
	t.Cleanup(cancelB)
	if err := chromedp.Do(ctxB, chromedp.Navigate("about:blank")); err != nil {
		t.Fatal(err)
	}
	errs.listen(ctxB, "page B")
	screenshot := func(ctx context.Context, name string) {
		t.Helper()
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		p := filepath.Join(t.ArtifactDir(), name+".png")
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot: %s", p)
	}
	// fail saves both pages as they are, to show what went wrong.
	fail := func(format string, args ...any) {
		t.Helper()
		screenshot(ctxA, "failed-page-a")
		screenshot(ctxB, "failed-page-b")
		t.Fatalf(format, args...)
	}
	run := func(ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		tctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := chromedp.Do(tctx, actions...); err != nil {
			fail("%s: %v (console errors: %v)", what, err, errs.list())
		}
	}
	// logIn types the name and presses Enter: no mouse.
	logIn := func(ctx context.Context, url, name string) {
		t.Helper()
		run(ctx, name+" logs in",
			chromedp.Navigate(url),
			chromedp.WaitVisible(chromedp.ID("name")),
			chromedp.WaitEnabled(chromedp.ID("login-button")),
			chromedp.SendKeys(chromedp.ID("name"), name+"\r"),
			chromedp.WaitVisible(chromedp.ID("chat")),
			chromedp.WaitVisible(chromedp.CSS(`#conn[data-state="online"]`)),
		)
	}
	say := func(ctx context.Context, who, to, text string) {
		t.Helper()
		if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`(document.getElementById("to").value = "", true)`)); err != nil {
			fail("clear the recipient: %v", err)
		}
		run(ctx, who+" sends "+text,
			chromedp.SendKeys(chromedp.ID("to"), to),
			chromedp.SendKeys(chromedp.ID("text"), text+"\r"), // Enter sends
		)
	}
	// waitMsg waits for a message of the given class with text in it and,
	// for one sent, the given status.
	waitMsg := func(ctx context.Context, what, class, text, status string) {
		t.Helper()
		sel := fmt.Sprintf(`li.msg.%s`, class)
		if status != "" {
			sel += fmt.Sprintf(`[data-status=%q]`, status)
		}
		js := fmt.Sprintf(`[...document.querySelectorAll(%q)].some(li => li.textContent.includes(%q))`, sel, text)
		tctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if _, err := chromedp.Run(tctx, chromedp.Poll[bool](js, chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
			fail("%s: %v (console errors: %v)", what, err, errs.list())
		}
	}

	logIn(ctxA, "http://"+webA+"/", "alice")
	logIn(ctxB, "http://"+webB+"/", "bob")

	say(ctxA, "alice", "bob", "hello bob, from server a")
	waitMsg(ctxB, "bob gets alice's message", "in", "hello bob, from server a", "")
	// The pages log in with acks and receipts: bob's page acks what it
	// shows, and alice's then says bob has it.
	waitMsg(ctxA, "alice sees bob received it", "out", "hello bob, from server a", "received")
	say(ctxB, "bob", "alice", "hi alice, from server b")
	waitMsg(ctxA, "alice gets bob's reply", "in", "hi alice, from server b", "")
	waitMsg(ctxB, "bob sees alice received his", "out", "hi alice, from server b", "received")

	// A refusal shows the server's reason.
	say(ctxA, "alice", "two  spaces", "to nobody") // a doubled space is not a name
	waitMsg(ctxA, "alice sees the refusal", "out", "to nobody", "refused")

	// Bob's page goes away; alice's next message is stored for him.
	run(ctxB, "bob leaves", chromedp.Navigate("about:blank"))
	st := store.New(tr.a.Redis, store.Config{})
	testenv.Eventually(t, 10*time.Second, "bob's presence released", func() bool {
		_, found, err := st.Lookup(context.Background(), "bob")
		return err == nil && !found
	})
	say(ctxA, "alice", "bob", "are you there? (sent while you were away)")
	waitMsg(ctxA, "alice sees it stored offline", "out", "are you there?", "offline")

	// He comes back: the page logs him in by itself and shows the message.
	run(ctxB, "bob comes back",
		chromedp.Navigate("http://"+webB+"/"),
		chromedp.WaitVisible(chromedp.ID("chat")),
	)
	waitMsg(ctxB, "bob gets the offline message", `in[data-offline="true"]`, "are you there?", "")
	waitMsg(ctxA, "alice sees bob received the offline message", "out", "are you there?", "received")
	testenv.Eventually(t, 10*time.Second, "every message and receipt acked: nothing kept", func() bool {
		for _, user := range []string{"alice", "bob"} {
			if n, err := tr.a.Redis.LLen(context.Background(), "chatrelay:inbox:"+user).Result(); err != nil || n != 0 {
				return false
			}
		}
		return true
	})

	if e := errs.list(); len(e) > 0 {
		fail("JavaScript console errors:\n%s", strings.Join(e, "\n"))
	}

	// Bob's server restarts: his page says it is reconnecting, comes back
	// by itself when the server does, logged in, and chats on.
	outage := len(errs.list())
	tr.b.Close()
	run(ctxB, "bob's page says it reconnects",
		chromedp.WaitVisible(chromedp.CSS(`#conn[data-state="reconnecting"]`)),
		void(chromedp.Poll[bool](`document.getElementById("conn").textContent.includes("reconnecting in")`)),
	)
	screenshot(ctxB, "page-b-bob-reconnecting")
	tr.b = tr.server(t, "msg-b", nil)
	tr.b.ServeWebAt(t, webB)
	testenv.WaitLinked(t, tr.b)
	run(ctxB, "bob's page is back, logged in",
		chromedp.WaitVisible(chromedp.CSS(`#conn[data-state="online"]`)),
		chromedp.WaitVisible(chromedp.ID("chat")),
	)
	testenv.Eventually(t, 10*time.Second, "bob logged in again", func() bool { return tr.b.Sessions() == 1 })
	say(ctxA, "alice", "bob", "welcome back")
	waitMsg(ctxB, "bob gets a message after the restart", "in", "welcome back", "")
	waitMsg(ctxA, "alice sees bob received it", "out", "welcome back", "received")

	screenshot(ctxA, "page-a-alice")
	screenshot(ctxB, "page-b-bob")
	// Since the server went down the browser may have logged refused
	// connections (errors it reports itself, not the page's script, and
	// reported a little late); nothing else is allowed.
	var unexpected []string
	for i, e := range errs.list() {
		if i >= outage && strings.Contains(e, "ERR_CONNECTION_REFUSED") {
			continue
		}
		unexpected = append(unexpected, e)
	}
	if len(unexpected) > 0 {
		t.Fatalf("JavaScript console errors:\n%s", strings.Join(unexpected, "\n"))
	}
}

// With signed logins the page asks for a token: a wrong one is refused
// with the server's reason on screen, the right one logs in.
func TestBrowserLoginWithToken(t *testing.T) {
	chrome := testenv.Need(t, "chromium", "chromium")
	key, err := msgserver.ParseAuthKey([]byte(hmacKey))
	if err != nil {
		t.Fatal(err)
	}
	tr := startTier(t, func(c *msgserver.Config) { c.AuthKey = key })
	web := tr.a.ServeWeb(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chrome), chromedp.WindowSize(412, 860), chromedp.DisableGPU)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox)
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	var errs consoleErrors
	errs.listen(ctx, "page")
	tctx, tcancel := context.WithTimeout(ctx, 20*time.Second)
	defer tcancel()
	wrong := jwtSign(t, jwt.SigningMethodHS256, []byte(hmacKey), claims("somebody-else", time.Minute))
	right := jwtSign(t, jwt.SigningMethodHS256, []byte(hmacKey), claims("dora", time.Minute))
	err = chromedp.Do(tctx,
		chromedp.Navigate("http://"+web+"/"),
		chromedp.WaitVisible(chromedp.ID("token")), // the server checks tokens: the page asks for one
		chromedp.WaitEnabled(chromedp.ID("login-button")),
		chromedp.SendKeys(chromedp.ID("name"), "dora"),
		chromedp.SendKeys(chromedp.ID("token"), wrong+"\r"),
		void(chromedp.Poll[bool](`document.getElementById("login-error").textContent.includes("authentication failed")`)),
	)
	if err != nil {
		t.Fatalf("wrong token: %v (console errors: %v)", err, errs.list())
	}
	if _, err := chromedp.Run(tctx, chromedp.Evaluate[bool](`(document.getElementById("token").value = "", true)`)); err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(tctx,
		chromedp.SendKeys(chromedp.ID("token"), right+"\r"),
		chromedp.WaitVisible(chromedp.ID("chat")),
		void(chromedp.Poll[bool](`document.getElementById("me").textContent === "dora"`)),
	)
	if err != nil {
		t.Fatalf("right token: %v (console errors: %v)", err, errs.list())
	}
	png, err := chromedp.Run(tctx, chromedp.FullScreenshot(100))
	if err == nil {
		_ = os.WriteFile(filepath.Join(t.ArtifactDir(), "page-token-login.png"), png, 0o644)
	}
	if e := errs.list(); len(e) > 0 {
		t.Fatalf("JavaScript console errors:\n%s", strings.Join(e, "\n"))
	}
}
