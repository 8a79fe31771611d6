export async function runLab(_opts: { keep?: boolean; clean?: boolean; quick?: boolean; out: string; json: boolean }): Promise<number> {
  return 0;
}
