//! llama.cpp's own log lines, into `tracing` at debug level (target `llama.cpp`), so
//! `relaymesh node` stays readable; `RUST_LOG=llama.cpp=debug` shows them. The last
//! error line is kept: a failed load then says why, not just "null result".

use std::ffi::{c_char, c_void, CStr};
use std::sync::{Mutex, Once};

static LAST_ERROR: Mutex<Option<String>> = Mutex::new(None);

std::thread_local! {
    // A line may arrive in parts (GGML_LOG_LEVEL_CONT); it is logged when complete.
    static LINE: std::cell::RefCell<(String, llama_cpp_sys_2::ggml_log_level)> =
        const { std::cell::RefCell::new((String::new(), 0)) };
}

extern "C" fn on_log(level: llama_cpp_sys_2::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string that lives for the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    LINE.with_borrow_mut(|(line, line_level)| {
        if level != llama_cpp_sys_2::GGML_LOG_LEVEL_CONT {
            *line_level = level;
        }
        line.push_str(&text);
        if !line.ends_with('\n') {
            return;
        }
        let message = line.trim_end();
        if !message.is_empty() {
            if *line_level == llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR {
                *LAST_ERROR.lock().expect("log lock") = Some(message.to_owned());
            }
            tracing::debug!(target: "llama.cpp", "{message}");
        }
        line.clear();
    });
}

/// Routes llama.cpp's logging into `tracing` (once per process).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the callback is a plain function that lives for the program.
        unsafe { llama_cpp_sys_2::llama_log_set(Some(on_log), std::ptr::null_mut()) };
    });
}

/// The last error llama.cpp logged, taken (so a later failure does not repeat it).
pub fn take_last_error() -> Option<String> {
    LAST_ERROR.lock().expect("log lock").take()
}
