// Drives org.llamaaot.LlamaAot (runtime_stubs/native/jni) on a package: greedy generation, printed
// as one line "tokens=<ids> first_logit=<float>" for test_native_runtime.py, plus error paths.
import org.llamaaot.LlamaAot;

public class JniSmoke {
  public static void main(String[] args) {
    String dir = args[0];
    int maxTokens = Integer.parseInt(args[1]);
    String[] parts = args[2].split(",");
    int[] prompt = new int[parts.length];
    for (int i = 0; i < parts.length; i++) prompt[i] = Integer.parseInt(parts[i]);
    try (LlamaAot m = new LlamaAot(dir, "cpu")) {
      StringBuilder sb = new StringBuilder();
      float[] logits = m.prefill(prompt);
      float first = logits[0];
      for (int step = 0; step < maxTokens; step++) {
        int tok = m.sample(logits, 0f, 1f, step);
        sb.append(step == 0 ? "" : ",").append(tok);
        if (m.isEos(tok) || step + 1 == maxTokens) break;
        logits = m.decode(tok);
      }
      System.out.println("tokens=" + sb + " first_logit=" + first + " vocab=" + m.vocabSize());
      // the turn API: the same greedy tokens as the loop above, streamed to the listener
      m.reset();
      StringBuilder streamed = new StringBuilder();
      int[] turn = m.generate(prompt, maxTokens, 0f, 1f, 0, true, tok -> {
        streamed.append(streamed.length() == 0 ? "" : ",").append(tok);
        return false;
      });
      StringBuilder returned = new StringBuilder();
      for (int i = 0; i < turn.length; i++) returned.append(i == 0 ? "" : ",").append(turn[i]);
      System.out.println("turn=" + returned + " streamed=" + streamed);
      // a cancel from another thread ends a running turn with ERR_CANCELLED
      m.reset();
      final int[] seen = {0};
      try {
        m.generate(prompt, maxTokens, 0f, 1f, 0, false, tok -> {
          if (++seen[0] == 2) {
            Thread t = new Thread(m::cancel);
            t.start();
            try {
              t.join();
            } catch (InterruptedException e) {
              throw new RuntimeException(e);
            }
          }
          return false;
        });
        System.out.println("cancelled=missing");
      } catch (LlamaAot.LlamaAotException e) {
        System.out.println("cancelled=" + e.status + " seen=" + seen[0]);
      }
      try {
        m.decode(-5);
        System.out.println("error_path=missing");
      } catch (LlamaAot.LlamaAotException e) {
        System.out.println("error_path=" + e.status);
      }
    }
    try {
      new LlamaAot(dir + "/does-not-exist", "cpu");
    } catch (LlamaAot.LlamaAotException e) {
      System.out.println("open_error=" + e.status);
    }
  }
}
